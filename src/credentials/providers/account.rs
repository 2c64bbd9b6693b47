//! Providers whose plugin is sent the pod's service-account token (KEP-4412,
//! `tokenAttributes`), as the kubelet's `pluginProvider.provide` and its `serviceAccountProvider`
//! handle them: which ServiceAccount, which of its annotations, whether the plugin runs at all,
//! and the keys that keep one ServiceAccount's answers from ever serving another.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use super::config::TokenAttributesDoc;
use crate::credentials::ServiceAccountTokens;
use crate::credentials::tokens::{AccountToken, PodAccount};

/// `tokenAttributes.cacheType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TokenCacheType {
    /// Answers are kept per token: a new token runs the plugin again.
    Token,
    /// Answers are kept per ServiceAccount (namespace, name, UID and the annotations sent).
    ServiceAccount,
}

/// A validated `tokenAttributes`.
#[derive(Debug)]
pub(super) struct TokenAttrs {
    audience: String,
    pub(super) cache_type: TokenCacheType,
    require_service_account: bool,
    required_keys: Vec<String>,
    optional_keys: Vec<String>,
}

impl TokenAttrs {
    /// From a document [`super::validate`] accepted (so the required fields are there).
    pub(super) fn from_doc(doc: TokenAttributesDoc) -> Self {
        TokenAttrs {
            audience: doc.service_account_token_audience.unwrap_or_default(),
            cache_type: match doc.cache_type.as_deref() {
                Some("Token") => TokenCacheType::Token,
                _ => TokenCacheType::ServiceAccount,
            },
            require_service_account: doc.require_service_account.unwrap_or(true),
            required_keys: doc
                .required_service_account_annotation_keys
                .unwrap_or_default(),
            optional_keys: doc
                .optional_service_account_annotation_keys
                .unwrap_or_default(),
        }
    }
}

/// What a plugin run is made with, for a provider that takes a token.
pub(super) struct Identity {
    pub(super) token: AccountToken,
    pub(super) annotations: BTreeMap<String, String>,
    pub(super) scope: Scope,
}

/// What the answers of one run are kept and merged under, besides the image: empty for a
/// provider without `tokenAttributes`, as in the kubelet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Scope {
    /// kubelet's `generateServiceAccountCacheKey`: namespace, name, UID, the annotations sent,
    /// and for `cacheType: Token` the token's hash.
    pub(super) cache: String,
    /// Concurrent asks with the same scope share one run. The kubelet merges by image, token
    /// hash and annotations; the namespace, name and UID are added here, so no run is ever
    /// shared across ServiceAccounts.
    pub(super) flight: String,
}

/// What the provider does for one ask.
pub(super) enum Plan {
    /// Run the plugin (with this identity when it takes a token).
    Run(Option<Identity>),
    /// The kubelet would not run the plugin: the node gets nothing from it.
    Skip,
}

/// kubelet's `provide` up to the cache lookup: no ServiceAccount (only `pullgate check`, which
/// reviews no pod), a ServiceAccount without a required annotation, or a token that cannot be
/// had each decide what the node would get.
pub(super) async fn plan(
    attrs: &TokenAttrs,
    account: Option<&PodAccount>,
    tokens: Option<&ServiceAccountTokens>,
) -> Result<Plan, Arc<str>> {
    let Some(account) = account else {
        // A pod without a ServiceAccount: the kubelet runs the plugin without a token unless
        // the provider requires one. Here it is not a pod at all, so say why nothing came.
        return if attrs.require_service_account {
            Err(Arc::from(
                "needs the pod's service-account token (tokenAttributes), and there is no pod here",
            ))
        } else {
            Ok(Plan::Run(None))
        };
    };
    let Some(tokens) = tokens else {
        return Err(Arc::from(
            "needs the pod's service-account token (tokenAttributes); pullgate requests one only with --provider-service-account-tokens",
        ));
    };
    let (namespace, name) = (&account.namespace, &account.service_account);
    let found = tokens.account(namespace, name).await;
    let sa = match found.as_ref() {
        Ok(sa) => sa,
        Err(e) => return Err(Arc::from(format!("cannot read its ServiceAccount: {e}"))),
    };
    let mut annotations = BTreeMap::new();
    for key in &attrs.required_keys {
        match sa.annotations.get(key) {
            Some(value) => {
                annotations.insert(key.clone(), value.clone());
            }
            None => {
                tracing::debug!(namespace = %namespace, service_account = %name, annotation = %key,
                    "required annotation missing: as on the node, the plugin is not run");
                return Ok(Plan::Skip);
            }
        }
    }
    for key in &attrs.optional_keys {
        if let Some(value) = sa.annotations.get(key) {
            annotations.insert(key.clone(), value.clone());
        }
    }
    let token = tokens
        .token(namespace, name, &sa.uid, &attrs.audience)
        .await
        .map_err(|e| Arc::<str>::from(format!("cannot get a service-account token: {e}")))?;
    let scope = scope(
        account,
        &sa.uid,
        &annotations,
        attrs.cache_type,
        token.expose(),
    );
    Ok(Plan::Run(Some(Identity {
        token,
        annotations,
        scope,
    })))
}

/// The cache and in-flight scopes of one ServiceAccount's ask.
fn scope(
    account: &PodAccount,
    uid: &str,
    annotations: &BTreeMap<String, String>,
    cache_type: TokenCacheType,
    token: &str,
) -> Scope {
    let mut key = String::new();
    for field in [&account.namespace, &account.service_account, uid] {
        push_field(&mut key, field);
    }
    let _ = write!(key, "{}:", annotations.len());
    for (k, v) in annotations {
        push_field(&mut key, k);
        push_field(&mut key, v);
    }
    let token_hash = format!("sha256:{:x}", Sha256::digest(token.as_bytes()));
    let mut flight = key.clone();
    push_field(&mut flight, &token_hash);
    if cache_type == TokenCacheType::Token {
        push_field(&mut key, "token");
        push_field(&mut key, &token_hash);
    }
    Scope { cache: key, flight }
}

/// Length-prefixed, so no two different field lists make the same key.
fn push_field(key: &mut String, field: &str) {
    let _ = write!(key, "{}:{field}", field.len());
}

/// `base` (an image, a registry or `global`) within `scope`; image names hold no NUL.
pub(super) fn scoped(base: &str, scope: &str) -> String {
    if scope.is_empty() {
        base.to_owned()
    } else {
        format!("{base}\0{scope}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(namespace: &str, name: &str) -> PodAccount {
        PodAccount {
            namespace: namespace.into(),
            service_account: name.into(),
        }
    }

    #[test]
    fn scopes_separate_service_accounts_and_tokens_as_the_cache_type_says() {
        let none = BTreeMap::new();
        let sa = TokenCacheType::ServiceAccount;
        let a = scope(&account("shop", "puller"), "u1", &none, sa, "t1");
        // Another token of the same ServiceAccount: same cache scope, another run.
        let a2 = scope(&account("shop", "puller"), "u1", &none, sa, "t2");
        assert_eq!(a.cache, a2.cache);
        assert_ne!(a.flight, a2.flight);
        // Another namespace, name or UID (a deleted and re-created account): never shared.
        for other in [
            scope(&account("other", "puller"), "u1", &none, sa, "t1"),
            scope(&account("shop", "builder"), "u1", &none, sa, "t1"),
            scope(&account("shop", "puller"), "u2", &none, sa, "t1"),
            // Fields that would run together without their lengths.
            scope(&account("shopp", "uller"), "u1", &none, sa, "t1"),
        ] {
            assert_ne!(a.cache, other.cache);
            assert_ne!(a.flight, other.flight);
        }
        // The annotations sent are part of it.
        let mut role = BTreeMap::new();
        role.insert("example.com/role".to_owned(), "reader".to_owned());
        assert_ne!(
            a.cache,
            scope(&account("shop", "puller"), "u1", &role, sa, "t1").cache
        );
        // cacheType Token: per token, and the token itself is never in a key.
        let t1 = scope(
            &account("shop", "puller"),
            "u1",
            &none,
            TokenCacheType::Token,
            "t1",
        );
        let t2 = scope(
            &account("shop", "puller"),
            "u1",
            &none,
            TokenCacheType::Token,
            "t2",
        );
        assert_ne!(t1.cache, t2.cache);
        assert!(!t1.cache.contains("t1") && !t1.flight.contains(":t1"));
    }

    #[test]
    fn scoped_keys_without_a_scope_are_the_kubelets() {
        assert_eq!(scoped("r.io/app", ""), "r.io/app");
        assert_ne!(scoped("r.io/app", "x"), scoped("r.io/app", "y"));
    }
}
