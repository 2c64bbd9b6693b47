//! Service-account tokens for credential-provider plugins that ask for one (KEP-4412,
//! `tokenAttributes`), requested through the TokenRequest API
//! (`POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token`) as the kubelet requests them,
//! with two differences the admission moment forces:
//! - the kubelet binds the token to the Pod (`boundObjectRef`); a Pod under review does not exist
//!   yet and a pod template never will, so pullgate's token is bound to nothing and is asked for
//!   the shortest lifetime the API server grants (10 minutes);
//! - tokens are reused for most of their lifetime per (ServiceAccount, UID, audience), as the
//!   kubelet's token manager reuses them, so a burst of reviews costs one TokenRequest.
//!
//! This needs `create` on `serviceaccounts/token`, so it is used only when the operator turns it
//! on. The ServiceAccount itself (its UID and annotations) is read through [`SecretStore`]'s
//! cache, the same read the pull-secret lookup makes.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::core::params::PostParams;
use moka::Expiry;
use moka::future::Cache;
use serde::Deserialize;

use super::pull_secrets::{Account, LookupError, ObjectKey, SecretStore};

/// The shortest lifetime kube-apiserver accepts for a requested token.
const TOKEN_SECONDS: i64 = 600;
/// A token is reused until this share of its lifetime has passed (the kubelet's token manager
/// refreshes at 80%).
const REUSE_SHARE: f64 = 0.8;
/// Tokens kept at most (one per ServiceAccount and audience in use).
const MAX_TOKENS: u64 = 10_000;

/// Whose image is asked for: the workload's namespace and the ServiceAccount its pods run as.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodAccount {
    pub namespace: String,
    pub service_account: String,
}

/// A service-account token. It is a bearer credential for the cluster: `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct AccountToken(Arc<str>);

impl AccountToken {
    pub(crate) fn new(token: String) -> Self {
        AccountToken(Arc::from(token))
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AccountToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccountToken(<redacted>)")
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct TokenKey {
    namespace: String,
    name: String,
    uid: String,
    audience: String,
}

struct Issued {
    token: AccountToken,
    /// How long it is reused from when it was issued.
    reuse_for: Duration,
}

type TokenLookup = Arc<Result<Issued, LookupError>>;

struct TokenExpiry {
    error_ttl: Duration,
}

impl Expiry<TokenKey, TokenLookup> for TokenExpiry {
    fn expire_after_create(
        &self,
        _key: &TokenKey,
        value: &TokenLookup,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(match value.as_ref() {
            Ok(issued) => issued.reuse_for,
            Err(_) => self.error_ttl,
        })
    }
}

/// Reads ServiceAccounts and requests their tokens for credential-provider plugins.
#[derive(Clone)]
pub struct ServiceAccountTokens {
    store: SecretStore,
    tokens: Cache<TokenKey, TokenLookup>,
}

impl fmt::Debug for ServiceAccountTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccountTokens")
            .field("tokens", &self.tokens.entry_count())
            .finish_non_exhaustive()
    }
}

/// The parts of a `TokenRequest` answer that are used.
#[derive(Deserialize)]
struct TokenRequestDoc {
    #[serde(default)]
    status: Option<TokenStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenStatus {
    #[serde(default)]
    token: String,
    #[serde(default)]
    expiration_timestamp: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

impl ServiceAccountTokens {
    /// Uses `store`'s API client and ServiceAccount cache; failed requests are retried after
    /// its `error_ttl`.
    pub fn new(store: SecretStore) -> Self {
        let error_ttl = store.options().error_ttl;
        ServiceAccountTokens {
            store,
            tokens: Cache::builder()
                .max_capacity(MAX_TOKENS)
                .expire_after(TokenExpiry { error_ttl })
                .build(),
        }
    }

    /// The ServiceAccount `namespace/name` (cached with the pull-secret reads).
    pub(crate) async fn account(
        &self,
        namespace: &str,
        name: &str,
    ) -> Arc<Result<Account, LookupError>> {
        self.store.account(namespace, name).await
    }

    /// A token of `namespace/name` (whose UID is `uid`) for `audience`, reused while fresh.
    pub(crate) async fn token(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        audience: &str,
    ) -> Result<AccountToken, LookupError> {
        let key = TokenKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: uid.to_owned(),
            audience: audience.to_owned(),
        };
        let found = self
            .tokens
            .get_with_by_ref(&key, async { Arc::new(self.request(&key).await) })
            .await;
        match found.as_ref() {
            Ok(issued) => Ok(issued.token.clone()),
            Err(e) => Err(e.clone()),
        }
    }

    /// kubelet's `getServiceAccountToken`, without the Pod binding (see the module comment):
    /// the ServiceAccount's UID as a precondition, the provider's audience.
    async fn request(&self, key: &TokenKey) -> Result<Issued, LookupError> {
        const KIND: &str = "serviceaccount token";
        let object = ObjectKey {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
        };
        let body = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "metadata": {"uid": key.uid},
            "spec": {
                "audiences": [key.audience],
                "expirationSeconds": TOKEN_SECONDS,
            },
        });
        let request = kube::core::Request::new(format!(
            "/api/v1/namespaces/{}/serviceaccounts",
            key.namespace
        ))
        .create_subresource(
            "token",
            &key.name,
            &PostParams::default(),
            serde_json::to_vec(&body).expect("JSON values serialise"),
        )
        .map_err(|e| LookupError::Malformed {
            kind: KIND,
            object: object.to_string(),
            problem: format!("invalid name: {e}"),
        })?
        .map(kube::client::Body::from);
        let answer: TokenRequestDoc = self.store.send(request, KIND, &object, &[200, 201]).await?;
        let status = answer
            .status
            .filter(|s| !s.token.is_empty())
            .ok_or_else(|| LookupError::Malformed {
                kind: KIND,
                object: object.to_string(),
                problem: "the TokenRequest answer holds no token".to_owned(),
            })?;
        let lifetime = status
            .expiration_timestamp
            .map(|t| t.0.duration_since(k8s_openapi::jiff::Timestamp::now()))
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or(Duration::from_secs(TOKEN_SECONDS as u64));
        tracing::debug!(
            namespace = %key.namespace,
            service_account = %key.name,
            audience = %key.audience,
            lifetime_s = lifetime.as_secs(),
            "service-account token issued for a credential provider"
        );
        Ok(Issued {
            token: AccountToken::new(status.token),
            reuse_for: lifetime.mul_f64(REUSE_SHARE),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_never_shows_in_debug() {
        let token = AccountToken(Arc::from("eyJhbGciOi.secret"));
        assert!(!format!("{token:?}").contains("secret"));
    }
}
