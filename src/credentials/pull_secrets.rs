//! Pull secrets read through the Kubernetes API, the way the kubelet and the ServiceAccount
//! admission plugin find them.
//!
//! For a Pod, the secrets are the ones its spec names: the ServiceAccount admission plugin has
//! already copied the ServiceAccount's `imagePullSecrets` into it before a validating webhook
//! sees it. For the pod template of a controller nothing has been copied yet, so an empty list
//! is filled from the ServiceAccount the template names, exactly as the plugin will do when the
//! Pods are created.
//!
//! Every Secret and ServiceAccount read is cached for a short, fixed time (by default 30 s) and
//! concurrent reads of the same object are merged, so a burst of reviews costs one API call per
//! object, and a changed or deleted secret takes effect within that time. A secret that cannot
//! be used never fails a review: the kubelet pulls without it, and so do we, with a warning.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::core::params::GetParams;
use moka::Expiry;
use moka::future::Cache;
use serde::de::DeserializeOwned;

use super::docker_config::{self, DockerConfig};
use super::keyring::{self, Keyring};
use super::tokens::PodAccount;
use crate::oci::reference::ImageRef;
use crate::registry::Credential;

/// The API server refuses Secrets over 1 MiB of data; base64 and metadata make the JSON about a
/// third bigger. Anything larger is not a Secret the API server would have stored.
pub(super) const MAX_OBJECT_BYTES: usize = 2 * 1024 * 1024;

const TYPE_DOCKER_CONFIG_JSON: &str = "kubernetes.io/dockerconfigjson";
const TYPE_DOCKERCFG: &str = "kubernetes.io/dockercfg";
const KEY_DOCKER_CONFIG_JSON: &str = ".dockerconfigjson";
const KEY_DOCKERCFG: &str = ".dockercfg";

/// How long reads are trusted, and how long a read may take.
#[derive(Clone, Debug)]
pub struct SecretOptions {
    /// How long a Secret or ServiceAccount read (found, missing or forbidden) is reused. This is
    /// the bound on how long a changed or deleted secret takes to apply.
    pub ttl: Duration,
    /// How long a failed read (timeout, API server error) is reused before it is tried again.
    pub error_ttl: Duration,
    /// Deadline of one API call.
    pub request_timeout: Duration,
    /// Objects kept at most, Secrets and ServiceAccounts each.
    pub max_entries: u64,
    /// Bytes the Secrets and ServiceAccounts kept may take, each (an estimate): a namespace's
    /// secrets are its owners' to make large (up to 1 MiB each).
    pub max_bytes: u64,
}

impl Default for SecretOptions {
    fn default() -> Self {
        SecretOptions {
            ttl: Duration::from_secs(30),
            error_ttl: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            max_entries: 10_000,
            max_bytes: 8 * 1024 * 1024,
        }
    }
}

/// What a pod spec says about its pull credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullSecretRefs {
    /// `imagePullSecrets` names, in spec order.
    pub names: Vec<String>,
    /// The ServiceAccount the pod runs as (`default` when the spec names none).
    pub service_account: String,
    /// A controller's pod template: the ServiceAccount's secrets have not been copied in yet.
    pub is_template: bool,
}

/// The credentials a pod's images will be pulled with, before node-level ones.
#[derive(Clone, Debug, Default)]
pub struct PodCredentials {
    /// All usable pull secrets merged, as the kubelet merges them into one keyring.
    pub keyring: Keyring,
    /// `namespace/name` of every secret that contributed.
    pub secrets: Vec<String>,
    /// One line per secret or ServiceAccount that could not be used, for the review's warnings.
    pub warnings: Vec<String>,
    /// A read failed for a reason that may pass (timeout, API server error): a credential may
    /// be missing that the kubelet will have, so `unauthorized` is not trustworthy.
    pub incomplete: bool,
    /// Who the pod runs as, for credential providers sent its service-account token.
    pub account: Option<PodAccount>,
}

/// Why an object could not be used. Never carries secret material.
#[derive(Clone, Debug, thiserror::Error)]
pub(crate) enum LookupError {
    #[error("{kind} \"{object}\" not found")]
    NotFound { kind: &'static str, object: String },
    #[error("{kind} \"{object}\" cannot be read: forbidden (check pullgate's RBAC)")]
    Forbidden { kind: &'static str, object: String },
    #[error("{kind} \"{object}\" is not a docker registry secret (type {secret_type})")]
    WrongType {
        kind: &'static str,
        object: String,
        secret_type: String,
    },
    #[error("{kind} \"{object}\" has no {key} key")]
    MissingKey {
        kind: &'static str,
        object: String,
        key: &'static str,
    },
    #[error("{kind} \"{object}\" is malformed: {problem}")]
    Malformed {
        kind: &'static str,
        object: String,
        problem: String,
    },
    #[error("{kind} \"{object}\" could not be read: {problem}")]
    Unavailable {
        kind: &'static str,
        object: String,
        problem: String,
    },
}

impl LookupError {
    /// Failures that may pass on a retry.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(self, LookupError::Unavailable { .. })
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) struct ObjectKey {
    pub(super) namespace: String,
    pub(super) name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

type Lookup<T> = Arc<Result<T, LookupError>>;

/// Reads and caches pull secrets and ServiceAccounts.
#[derive(Clone)]
pub struct SecretStore {
    client: kube::Client,
    options: SecretOptions,
    secrets: Cache<ObjectKey, Lookup<DockerConfig>>,
    accounts: Cache<ObjectKey, Lookup<Account>>,
}

/// What pullgate uses of a ServiceAccount.
#[derive(Debug)]
pub(crate) struct Account {
    /// Its `imagePullSecrets` names.
    pub(crate) pull_secrets: Vec<String>,
    pub(crate) uid: String,
    /// Its annotations, for credential providers that are sent some of them (KEP-4412).
    pub(crate) annotations: BTreeMap<String, String>,
}

impl fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretStore")
            .field("options", &self.options)
            .field("secrets", &self.secrets.entry_count())
            .field("accounts", &self.accounts.entry_count())
            .finish_non_exhaustive()
    }
}

/// Failed reads are kept for `error_ttl`, everything else for `ttl`.
struct LookupExpiry {
    ttl: Duration,
    error_ttl: Duration,
}

impl<T> Expiry<ObjectKey, Lookup<T>> for LookupExpiry {
    fn expire_after_create(
        &self,
        _key: &ObjectKey,
        value: &Lookup<T>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(match value.as_ref() {
            Err(e) if e.is_transient() => self.error_ttl,
            _ => self.ttl,
        })
    }
}

/// What a cached read weighs: its key, what it holds, and moka's bookkeeping.
trait Weight {
    fn weight(&self) -> usize;
}

impl Weight for DockerConfig {
    fn weight(&self) -> usize {
        DockerConfig::weight(self)
    }
}

impl Weight for Account {
    fn weight(&self) -> usize {
        let secrets: usize = self.pull_secrets.iter().map(|name| 24 + name.len()).sum();
        let annotations: usize = self
            .annotations
            .iter()
            .map(|(k, v)| 64 + k.len() + v.len())
            .sum();
        secrets + annotations + self.uid.len()
    }
}

impl SecretStore {
    pub fn new(client: kube::Client, options: SecretOptions) -> Self {
        fn cache<T: Weight + Send + Sync + 'static>(
            options: &SecretOptions,
        ) -> Cache<ObjectKey, Lookup<T>> {
            // The entry cap holds through the weight's floor, the byte cap through the weight.
            let floor = (options.max_bytes / options.max_entries.max(1)).max(256);
            Cache::builder()
                .max_capacity(options.max_bytes)
                .weigher(move |key: &ObjectKey, value: &Lookup<T>| {
                    let held = match value.as_ref() {
                        Ok(value) => value.weight(),
                        Err(_) => 128,
                    };
                    let weight = (256 + key.namespace.len() + key.name.len() + held) as u64;
                    u32::try_from(weight.max(floor)).unwrap_or(u32::MAX)
                })
                .expire_after(LookupExpiry {
                    ttl: options.ttl,
                    error_ttl: options.error_ttl,
                })
                .build()
        }
        SecretStore {
            secrets: cache(&options),
            accounts: cache(&options),
            client,
            options,
        }
    }

    pub(crate) fn options(&self) -> &SecretOptions {
        &self.options
    }

    /// The pull secrets the kubelet will use for a pod in `namespace` with these refs.
    pub async fn for_pod(&self, namespace: &str, refs: &PullSecretRefs) -> PodCredentials {
        let mut out = PodCredentials::default();
        let mut names = refs.names.clone();
        if refs.is_template && names.is_empty() {
            // The ServiceAccount admission plugin copies the account's secrets only into pods
            // that name none themselves.
            match self
                .account(namespace, &refs.service_account)
                .await
                .as_ref()
            {
                Ok(account) => names.clone_from(&account.pull_secrets),
                Err(e) => out.note(e),
            }
        }
        // Read in parallel, merged in spec order: the kubelet's keyring order depends on it.
        let lookups = join_all(names.iter().map(|name| self.secret(namespace, name))).await;
        for (name, lookup) in names.iter().zip(lookups) {
            match lookup.as_ref() {
                Ok(config) => {
                    out.keyring.add(config);
                    out.secrets.push(format!("{namespace}/{name}"));
                }
                Err(e) => out.note(e),
            }
        }
        out
    }

    async fn secret(&self, namespace: &str, name: &str) -> Lookup<DockerConfig> {
        let key = ObjectKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        self.secrets
            .get_with_by_ref(&key, async {
                let secret = self.get::<Secret>("secrets", "secret", &key).await;
                Arc::new(secret.and_then(|secret| docker_config(&key, &secret)))
            })
            .await
    }

    /// The ServiceAccount `namespace/name`, read at most once per `ttl`.
    pub(crate) async fn account(&self, namespace: &str, name: &str) -> Lookup<Account> {
        let key = ObjectKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        self.accounts
            .get_with_by_ref(&key, async {
                let account = self
                    .get::<ServiceAccount>("serviceaccounts", "serviceaccount", &key)
                    .await;
                Arc::new(account.map(|account| {
                    Account {
                        pull_secrets: account
                            .image_pull_secrets
                            .unwrap_or_default()
                            .into_iter()
                            .map(|reference| reference.name)
                            .filter(|name| !name.is_empty())
                            .collect(),
                        uid: account.metadata.uid.unwrap_or_default(),
                        annotations: account.metadata.annotations.unwrap_or_default(),
                    }
                }))
            })
            .await
    }

    /// One GET on the object's REST path.
    async fn get<T: DeserializeOwned>(
        &self,
        resource: &str,
        kind: &'static str,
        key: &ObjectKey,
    ) -> Result<T, LookupError> {
        let path = format!("/api/v1/namespaces/{}/{resource}", key.namespace);
        let request = kube::core::Request::new(path)
            .get(&key.name, &GetParams::default())
            .map_err(|e| LookupError::Malformed {
                kind,
                object: key.to_string(),
                problem: format!("invalid name: {e}"),
            })?;
        self.send(request.map(kube::client::Body::from), kind, key, &[200])
            .await
    }

    /// One API call about `key`, with the body bounded, the time bounded and the status
    /// mapped; `ok` lists the statuses whose body is the answer.
    pub(super) async fn send<T: DeserializeOwned>(
        &self,
        request: http::Request<kube::client::Body>,
        kind: &'static str,
        key: &ObjectKey,
        ok: &[u16],
    ) -> Result<T, LookupError> {
        let object = key.to_string();
        let unavailable = |problem: String| LookupError::Unavailable {
            kind,
            object: object.clone(),
            problem,
        };
        let fetch = async {
            let response = self
                .client
                .send(request)
                .await
                .map_err(|e| unavailable(e.to_string()))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_OBJECT_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<LengthLimitError>() {
                        LookupError::Malformed {
                            kind,
                            object: object.clone(),
                            problem: format!("larger than {MAX_OBJECT_BYTES} bytes"),
                        }
                    } else {
                        unavailable(format!("reading the response: {e}"))
                    }
                })?
                .to_bytes();
            Ok::<_, LookupError>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.options.request_timeout, fetch)
            .await
            .map_err(|_| {
                unavailable(format!(
                    "no answer within {}",
                    humantime::format_duration(self.options.request_timeout)
                ))
            })??;
        tracing::debug!(kind, object = %key, status = status.as_u16(), "called the API server");
        match status.as_u16() {
            code if ok.contains(&code) => {
                serde_json::from_slice(&body).map_err(|e| LookupError::Malformed {
                    kind,
                    object: object.clone(),
                    // Only the position: serde's message could quote secret data.
                    problem: format!("invalid JSON at line {}, column {}", e.line(), e.column()),
                })
            }
            404 => Err(LookupError::NotFound { kind, object }),
            401 | 403 => Err(LookupError::Forbidden { kind, object }),
            other => Err(unavailable(format!("API server answered HTTP {other}"))),
        }
    }
}

impl PodCredentials {
    /// The credentials to try for `image`, in the kubelet's order: the pod's secrets (merged
    /// into one keyring), then the node's.
    pub fn lookup(&self, node: &Keyring, image: &ImageRef) -> Vec<Credential> {
        keyring::lookup_all(&[&self.keyring, node], &image.name())
    }

    fn note(&mut self, e: &LookupError) {
        tracing::warn!(problem = %e, "pull secret not used");
        self.incomplete |= e.is_transient();
        self.warnings.push(match e {
            LookupError::NotFound { .. } | LookupError::Forbidden { .. } => {
                format!("{e}; the kubelet will pull without it")
            }
            _ => e.to_string(),
        });
    }
}

/// The docker config of a pull secret, read like the kubelet reads it: the type decides which
/// key is used, and a secret of any other type contributes nothing.
fn docker_config(key: &ObjectKey, secret: &Secret) -> Result<DockerConfig, LookupError> {
    let object = key.to_string();
    let secret_type = secret.type_.as_deref().unwrap_or("Opaque");
    let (data_key, parse): (_, fn(&[u8], &str) -> _) = match secret_type {
        TYPE_DOCKER_CONFIG_JSON => (KEY_DOCKER_CONFIG_JSON, docker_config::from_dockerconfigjson),
        TYPE_DOCKERCFG => (KEY_DOCKERCFG, docker_config::from_dockercfg),
        other => {
            return Err(LookupError::WrongType {
                kind: "secret",
                object,
                secret_type: other.to_owned(),
            });
        }
    };
    let Some(bytes) = secret
        .data
        .as_ref()
        .and_then(|data| data.get(data_key))
        .filter(|bytes| !bytes.0.is_empty())
    else {
        return Err(LookupError::MissingKey {
            kind: "secret",
            object,
            key: data_key,
        });
    };
    parse(&bytes.0, &format!("secret {object}")).map_err(|e| LookupError::Malformed {
        kind: "secret",
        object: object.clone(),
        problem: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;

    use super::*;

    fn key() -> ObjectKey {
        ObjectKey {
            namespace: "team-a".into(),
            name: "regcred".into(),
        }
    }

    fn secret(secret_type: Option<&str>, data: &[(&str, &str)]) -> Secret {
        Secret {
            type_: secret_type.map(str::to_owned),
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Secret::default()
        }
    }

    const CONFIG_JSON: &str =
        r#"{"auths":{"registry.example.com":{"username":"u","password":"hunter2"}}}"#;

    #[test]
    fn dockerconfigjson_secret_is_read_from_its_key() {
        let config = docker_config(
            &key(),
            &secret(
                Some(TYPE_DOCKER_CONFIG_JSON),
                &[(".dockerconfigjson", CONFIG_JSON)],
            ),
        )
        .unwrap();
        let (registry, credential) = config.entries().next().unwrap();
        assert_eq!(registry, "registry.example.com");
        assert_eq!(credential.username(), "u");
        assert_eq!(credential.source(), "secret team-a/regcred");
    }

    #[test]
    fn legacy_dockercfg_secret_is_read_from_its_key() {
        let config = docker_config(
            &key(),
            &secret(
                Some(TYPE_DOCKERCFG),
                &[(".dockercfg", r#"{"quay.io":{"auth":"dTpw"}}"#)],
            ),
        )
        .unwrap();
        assert_eq!(config.len(), 1);
    }

    #[test]
    fn the_type_decides_the_key_like_the_kubelet() {
        // A dockercfg-typed secret holding a .dockerconfigjson key is not used by the kubelet.
        let err = docker_config(
            &key(),
            &secret(Some(TYPE_DOCKERCFG), &[(".dockerconfigjson", CONFIG_JSON)]),
        )
        .unwrap_err();
        assert!(matches!(
            err,
            LookupError::MissingKey {
                key: ".dockercfg",
                ..
            }
        ));
        let err = docker_config(
            &key(),
            &secret(Some("Opaque"), &[(".dockerconfigjson", CONFIG_JSON)]),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "secret \"team-a/regcred\" is not a docker registry secret (type Opaque)"
        );
        let err = docker_config(&key(), &secret(None, &[])).unwrap_err();
        assert!(matches!(err, LookupError::WrongType { .. }));
    }

    #[test]
    fn malformed_and_empty_secrets_are_errors_without_secret_text() {
        let err = docker_config(
            &key(),
            &secret(
                Some(TYPE_DOCKER_CONFIG_JSON),
                &[(
                    ".dockerconfigjson",
                    r#"{"auths":{"r":{"password":"hunter2""#,
                )],
            ),
        )
        .unwrap_err();
        assert!(matches!(err, LookupError::Malformed { .. }), "{err}");
        assert!(!err.to_string().contains("hunter2"));
        assert!(!format!("{err:?}").contains("hunter2"));
        let err = docker_config(
            &key(),
            &secret(Some(TYPE_DOCKER_CONFIG_JSON), &[(".dockerconfigjson", "")]),
        )
        .unwrap_err();
        assert!(matches!(err, LookupError::MissingKey { .. }));
    }

    #[test]
    fn transient_failures_expire_sooner() {
        let expiry = LookupExpiry {
            ttl: Duration::from_secs(30),
            error_ttl: Duration::from_secs(5),
        };
        let at = |value: Result<(), LookupError>| {
            expiry.expire_after_create(&key(), &Arc::new(value), Instant::now())
        };
        assert_eq!(at(Ok(())), Some(Duration::from_secs(30)));
        let missing = LookupError::NotFound {
            kind: "secret",
            object: "a/b".into(),
        };
        assert_eq!(at(Err(missing)), Some(Duration::from_secs(30)));
        let down = LookupError::Unavailable {
            kind: "secret",
            object: "a/b".into(),
            problem: "timeout".into(),
        };
        assert_eq!(at(Err(down)), Some(Duration::from_secs(5)));
    }

    #[test]
    fn warnings_say_the_kubelet_goes_on_without_the_secret() {
        let mut credentials = PodCredentials::default();
        credentials.note(&LookupError::NotFound {
            kind: "secret",
            object: "team-a/gone".into(),
        });
        assert_eq!(
            credentials.warnings,
            ["secret \"team-a/gone\" not found; the kubelet will pull without it"]
        );
        assert!(!credentials.incomplete);
        credentials.note(&LookupError::Unavailable {
            kind: "secret",
            object: "team-a/x".into(),
            problem: "API server answered HTTP 503".into(),
        });
        assert!(credentials.incomplete);
    }
}
