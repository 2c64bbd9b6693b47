//! The Bearer token flow of the distribution auth spec: GET the challenge's realm with
//! `service` and `scope`, Basic credentials when we have some, and cache the token per
//! realm + service + scopes + credential identity, so a token obtained with one namespace's
//! secret is never handed to a probe made with another's.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use moka::{Expiry, future::Cache};
use serde::Deserialize;

use super::{CredentialId, RegistryMessage};

/// Token responses are small JSON documents: a JWT with its claims is one to a few KiB.
pub(super) const MAX_TOKEN_BODY: usize = 64 * 1024;

/// Tokens longer than this are used for the request that fetched them but not kept: a token
/// of tens of KiB is suspicious, and a cache of them would be a memory leak a registry controls.
pub(super) const MAX_CACHED_TOKEN: usize = 8 * 1024;

/// The token cache's size, in bytes of keys and tokens.
pub(super) const CACHE_BYTES: u64 = 8 * 1024 * 1024;

/// The token spec's default when `expires_in` is missing.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);

/// What identifies a token: who asked, for what, from whom.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct TokenKey {
    pub realm: String,
    pub service: Option<String>,
    pub scopes: Vec<String>,
    pub credential: CredentialId,
}

/// A registry token. Its value never appears in `Debug` output.
#[derive(Clone)]
pub(super) struct Token {
    value: Arc<str>,
    lifetime: Duration,
}

impl Token {
    pub(super) fn value(&self) -> &str {
        &self.value
    }

    pub(super) fn lifetime(&self) -> Duration {
        self.lifetime
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("value", &"<redacted>")
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token endpoint {realm} refused: HTTP {status}{}", fmt_message(.message))]
    Refused {
        realm: String,
        status: u16,
        message: RegistryMessage,
    },
    #[error("token endpoint {realm} answered without a token")]
    NoToken { realm: String },
    #[error("token endpoint {realm} sent an unreadable answer: {reason}")]
    Malformed { realm: String, reason: String },
    #[error("token endpoint {realm} could not be reached: {reason}")]
    Transport { realm: String, reason: String },
    #[error("token endpoint {realm} is not contacted: {reason}")]
    Egress { realm: String, reason: String },
    #[error("token endpoint {realm} did not answer in time")]
    Timeout { realm: String },
}

fn fmt_message(m: &RegistryMessage) -> String {
    if m.is_empty() {
        String::new()
    } else {
        format!(": {m}")
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<i64>,
}

/// Parses a token endpoint's JSON answer. `access_token` wins over `token` when both are
/// present, as containerd and the distribution client do.
pub(super) fn parse_token_response(realm: &str, body: &[u8]) -> Result<Token, TokenError> {
    let r: TokenResponse = serde_json::from_slice(body).map_err(|e| TokenError::Malformed {
        realm: realm.to_owned(),
        reason: e.to_string(),
    })?;
    let value = r
        .access_token
        .filter(|t| !t.is_empty())
        .or(r.token.filter(|t| !t.is_empty()))
        .ok_or_else(|| TokenError::NoToken {
            realm: realm.to_owned(),
        })?;
    // A token value goes into a header; one that cannot be a header value is unusable.
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenError::Malformed {
            realm: realm.to_owned(),
            reason: "token contains characters not allowed in a header".to_owned(),
        });
    }
    let lifetime = match r.expires_in {
        Some(s) if s > 0 => Duration::from_secs(s.min(86_400) as u64),
        _ => DEFAULT_LIFETIME,
    };
    Ok(Token {
        value: value.into(),
        lifetime,
    })
}

struct TokenExpiry;

impl Expiry<TokenKey, Token> for TokenExpiry {
    fn expire_after_create(&self, _: &TokenKey, token: &Token, _: Instant) -> Option<Duration> {
        if token.value.len() > MAX_CACHED_TOKEN {
            // Handed to the probes that waited for it, then gone.
            return Some(Duration::ZERO);
        }
        // Stop using a token a little before the registry does, so a request does not race
        // its expiry.
        let margin = (token.lifetime / 10).min(Duration::from_secs(30));
        Some(token.lifetime - margin)
    }
}

impl TokenKey {
    /// Roughly the bytes it holds, for the cache's bound.
    fn weight(&self) -> usize {
        64 + self.realm.len()
            + self.service.as_ref().map_or(0, String::len)
            + self.scopes.iter().map(|s| 24 + s.len()).sum::<usize>()
    }
}

/// Tokens by key, with single-flight fetching: concurrent probes that need the same token
/// make one request to the realm.
#[derive(Clone)]
pub(super) struct TokenCache {
    cache: Cache<TokenKey, Token>,
}

impl TokenCache {
    /// A cache holding at most `bytes` of keys and tokens.
    pub(super) fn new(bytes: u64) -> Self {
        TokenCache {
            cache: Cache::builder()
                .max_capacity(bytes)
                .weigher(|key: &TokenKey, token: &Token| {
                    u32::try_from(key.weight() + 64 + token.value.len()).unwrap_or(u32::MAX)
                })
                .expire_after(TokenExpiry)
                .build(),
        }
    }

    #[cfg(test)]
    async fn get(&self, key: &TokenKey) -> Option<Token> {
        self.cache.get(key).await
    }

    /// The cached token, or the one `fetch` returns (shared with concurrent callers).
    pub(super) async fn get_or_fetch<F>(
        &self,
        key: TokenKey,
        fetch: F,
    ) -> Result<(Token, bool), Arc<TokenError>>
    where
        F: Future<Output = Result<Token, TokenError>>,
    {
        if let Some(t) = self.cache.get(&key).await {
            return Ok((t, true));
        }
        self.cache
            .try_get_with(key, fetch)
            .await
            .map(|t| (t, false))
    }

    pub(super) async fn invalidate(&self, key: &TokenKey) {
        self.cache.invalidate(key).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_or_access_token() {
        let t = parse_token_response("r", br#"{"token":"a"}"#).unwrap();
        assert_eq!((t.value(), t.lifetime()), ("a", DEFAULT_LIFETIME));
        let t = parse_token_response("r", br#"{"access_token":"b","expires_in":300}"#).unwrap();
        assert_eq!((t.value(), t.lifetime()), ("b", Duration::from_secs(300)));
        let t = parse_token_response("r", br#"{"token":"a","access_token":"b"}"#).unwrap();
        assert_eq!(t.value(), "b");
        let t = parse_token_response("r", br#"{"token":"a","expires_in":0}"#).unwrap();
        assert_eq!(t.lifetime(), DEFAULT_LIFETIME);
    }

    #[test]
    fn bad_answers() {
        assert!(matches!(
            parse_token_response("r", b"{}"),
            Err(TokenError::NoToken { .. })
        ));
        assert!(matches!(
            parse_token_response("r", b"<html>"),
            Err(TokenError::Malformed { .. })
        ));
        assert!(matches!(
            parse_token_response("r", b"{\"token\":\"a\\nb\"}"),
            Err(TokenError::Malformed { .. })
        ));
    }

    #[test]
    fn debug_hides_value() {
        let t = parse_token_response("r", br#"{"token":"s3cr3t-token"}"#).unwrap();
        assert!(!format!("{t:?}").contains("s3cr3t"));
    }

    #[tokio::test]
    async fn single_flight_and_isolation() {
        let cache = TokenCache::new(CACHE_BYTES);
        let key = |cred| TokenKey {
            realm: "https://r/token".into(),
            service: Some("s".into()),
            scopes: vec!["repository:a:pull".into()],
            credential: cred,
        };
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let fetch = || async {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::task::yield_now().await;
            parse_token_response("r", br#"{"token":"t"}"#)
        };
        let anon = key(CredentialId::ANONYMOUS);
        let (a, b) = tokio::join!(
            cache.get_or_fetch(anon.clone(), fetch()),
            cache.get_or_fetch(anon.clone(), fetch())
        );
        assert!(a.is_ok() && b.is_ok());
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        let other = crate::registry::Credential::new("u", "p", "test").id();
        assert!(cache.get(&key(other)).await.is_none());
    }

    fn key_for(repo: usize) -> TokenKey {
        TokenKey {
            realm: "https://r/token".into(),
            service: Some("s".into()),
            scopes: vec![format!("repository:r{repo}:pull")],
            credential: CredentialId::ANONYMOUS,
        }
    }

    fn token_of(len: usize) -> Result<Token, TokenError> {
        let body = format!(r#"{{"token":"{}","expires_in":86400}}"#, "t".repeat(len));
        parse_token_response("r", body.as_bytes())
    }

    #[tokio::test]
    async fn the_cache_is_bounded_by_bytes_not_by_count() {
        let cache = TokenCache::new(64 * 1024);
        for repo in 0..200 {
            cache
                .get_or_fetch(key_for(repo), async { token_of(4 * 1024) })
                .await
                .unwrap();
        }
        cache.cache.run_pending_tasks().await;
        let held = cache.cache.weighted_size();
        assert!(held <= 64 * 1024, "{held} bytes held");
        assert!(
            cache.cache.entry_count() >= 10,
            "the bound still keeps tokens"
        );
    }

    #[tokio::test]
    async fn an_oversized_token_is_used_but_not_kept() {
        let cache = TokenCache::new(CACHE_BYTES);
        let (token, cached) = cache
            .get_or_fetch(key_for(1), async { token_of(MAX_CACHED_TOKEN + 1) })
            .await
            .unwrap();
        assert_eq!((token.value().len(), cached), (MAX_CACHED_TOKEN + 1, false));
        cache.cache.run_pending_tasks().await;
        assert!(cache.get(&key_for(1)).await.is_none());
        let (_, cached) = cache
            .get_or_fetch(key_for(2), async { token_of(MAX_CACHED_TOKEN) })
            .await
            .unwrap();
        assert!(!cached);
        assert!(
            cache.get(&key_for(2)).await.is_some(),
            "a normal token is kept"
        );
    }
}
