//! The middle layer: answering a registry's `WWW-Authenticate` challenge. The challenge is
//! taken from the 401 of the request itself, never trusted from a `/v2/` ping alone (old GCR
//! sent 401 without one on resources; only then is the ping asked); a challenge already known
//! for an origin is answered up front; Bearer tokens are fetched from the realm (HTTPS, or
//! HTTP for an HTTP registry) with Basic credentials when there are some, and cached per
//! realm, service, scopes and credential; a cached token the registry no longer takes is
//! fetched afresh once.

use base64::Engine as _;
use reqwest::{
    Method, Response, StatusCode,
    header::{self, HeaderMap, HeaderValue},
};
use url::Url;

use super::challenge::{self, Challenge, ChallengeError};
use super::error::{FetchError, display_url};
use super::message::RegistryMessage;
use super::token::{self, Token, TokenCache, TokenError, TokenKey};
use super::transport::{Exchange, MAX_ERROR_BODY, Reply, Transport};
use super::{Credential, CredentialId};

/// What authorization a request carried, so a 401 can tell a stale token from a refusal.
#[derive(PartialEq)]
enum Sent {
    Nothing,
    Basic,
    CachedToken(TokenKey),
    FreshToken(TokenKey),
}

/// What a 401 offers to be answered with.
enum Offered {
    Challenge(Challenge),
    /// Only schemes pullgate does not speak: the 401 is the answer.
    Unsupported,
    Unusable(ChallengeError),
    /// No `WWW-Authenticate` at all.
    Nothing,
}

fn offered_challenge(resp: &Response) -> Offered {
    let values: Vec<&str> = resp
        .headers()
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if values.is_empty() {
        return Offered::Nothing;
    }
    match challenge::select(values) {
        Ok(c) => Offered::Challenge(c),
        Err(ChallengeError::Unsupported(_)) => Offered::Unsupported,
        Err(source) => Offered::Unusable(source),
    }
}

/// scheme://host:port, the unit credentials and known challenges belong to.
pub(super) fn origin(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// The authentication of one session: its credential (for the registry's own origin only),
/// the repository its tokens are scoped to, and the caches of challenges and tokens.
pub(super) struct Authenticator<'a> {
    pub(super) transport: &'a Transport,
    pub(super) challenges: &'a moka::sync::Cache<String, Challenge>,
    pub(super) tokens: &'a TokenCache,
    pub(super) repository: &'a str,
    pub(super) credential: Option<&'a Credential>,
    pub(super) exchange: Exchange<'a>,
}

impl<'a> Authenticator<'a> {
    /// Sends `method` to `url`, answering its challenge: with the credential when `with_credential` (the
    /// registry's own origin), anonymously otherwise. A challenge already known for the origin
    /// is answered up front, which saves a round trip.
    pub(super) async fn send(
        &self,
        method: &Method,
        url: &Url,
        headers: &HeaderMap,
        with_credential: bool,
    ) -> Result<Reply<'a>, FetchError> {
        let credential = self.credential.filter(|_| with_credential);
        let origin = origin(url);
        let (auth, sent) = match self.challenges.get(&origin) {
            Some(known) => self.authorize(url, &known, credential).await?,
            None => (None, Sent::Nothing),
        };
        let resp = self
            .transport
            .send(method, url, headers, auth.as_ref(), self.exchange)
            .await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        // The 401 is let go before any other request: its connection slot may be the last
        // one to this host, which the ping or the token request would then wait for forever.
        // `kept` is `None` once it is gone; where it is the answer, it is asked for again.
        // It is drained, not dropped, so that an HTTP/1.1 connection goes back to the pool.
        let (challenge, kept) = match offered_challenge(&resp) {
            Offered::Challenge(challenge) => (challenge, Some(resp)),
            Offered::Unsupported => return Ok(resp),
            Offered::Unusable(source) => {
                return Err(FetchError::Challenge {
                    url: display_url(url),
                    source,
                });
            }
            Offered::Nothing => {
                resp.drain().await;
                match self.ping_challenge(url).await? {
                    Some(challenge) => (challenge, None),
                    None => {
                        return self
                            .transport
                            .send(method, url, headers, auth.as_ref(), self.exchange)
                            .await;
                    }
                }
            }
        };
        self.challenges.insert(origin, challenge.clone());
        let retry = match (&sent, &challenge) {
            (Sent::Nothing, _) => true,
            (Sent::Basic, Challenge::Basic) => false,
            (Sent::CachedToken(key), Challenge::Bearer { .. }) => {
                // The registry no longer takes a token we cached: fetch a fresh one, once.
                self.tokens.invalidate(key).await;
                true
            }
            (Sent::FreshToken(key), Challenge::Bearer { .. }) => {
                self.token_key(url, &challenge, credential)?.as_ref() != Some(key)
            }
            _ => true,
        };
        // Basic without credentials has nothing to answer with: the 401 is the answer.
        let answerable =
            credential.is_some() || self.token_key(url, &challenge, credential)?.is_some();
        if !retry || !answerable {
            return match kept {
                Some(resp) => Ok(resp),
                None => {
                    self.transport
                        .send(method, url, headers, auth.as_ref(), self.exchange)
                        .await
                }
            };
        }
        if let Some(resp) = kept {
            resp.drain().await;
        }
        let (auth, _) = self.authorize(url, &challenge, credential).await?;
        self.transport
            .send(method, url, headers, auth.as_ref(), self.exchange)
            .await
    }

    /// The challenge of a 401 from the resource itself. Old GCR sent 401 without
    /// `WWW-Authenticate` on resources; only then is the `/v2/` challenge consulted.
    async fn ping_challenge(&self, url: &Url) -> Result<Option<Challenge>, FetchError> {
        let ping = url.join("/v2/").expect("absolute path joins");
        let resp = self
            .transport
            .send(&Method::GET, &ping, &HeaderMap::new(), None, self.exchange)
            .await?;
        let challenge = if resp.status() == StatusCode::UNAUTHORIZED {
            let values = resp
                .headers()
                .get_all(header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok());
            challenge::select(values).ok()
        } else {
            None
        };
        resp.drain().await;
        Ok(challenge)
    }

    fn token_key(
        &self,
        url: &Url,
        challenge: &Challenge,
        credential: Option<&Credential>,
    ) -> Result<Option<TokenKey>, FetchError> {
        let Challenge::Bearer {
            realm,
            service,
            scope,
            ..
        } = challenge
        else {
            return Ok(None);
        };
        let realm_url = Url::parse(realm).map_err(|e| FetchError::Realm {
            realm: realm.chars().take(200).collect(),
            reason: e.to_string(),
        })?;
        // A token for an https registry fetched over http could be read and replayed by
        // anyone on the path, and the Basic credentials with it.
        let allowed = matches!(
            (url.scheme(), realm_url.scheme()),
            (_, "https") | ("http", "http")
        );
        if !allowed {
            return Err(FetchError::Realm {
                realm: display_url(&realm_url),
                reason: format!(
                    "a {} realm for an {} registry",
                    realm_url.scheme(),
                    url.scheme()
                ),
            });
        }
        let mut scopes = vec![format!("repository:{}:pull", self.repository)];
        if let Some(s) = scope.as_ref().filter(|s| !s.is_empty() && s.len() <= 512)
            && !scopes.contains(s)
        {
            scopes.push(s.clone());
        }
        Ok(Some(TokenKey {
            realm: realm.clone(),
            service: service.clone(),
            scopes,
            credential: credential.map_or(CredentialId::ANONYMOUS, Credential::id),
        }))
    }

    /// The Authorization header for `challenge`, fetching a token when needed.
    async fn authorize(
        &self,
        url: &Url,
        challenge: &Challenge,
        credential: Option<&Credential>,
    ) -> Result<(Option<HeaderValue>, Sent), FetchError> {
        let Some(key) = self.token_key(url, challenge, credential)? else {
            return Ok(match credential {
                Some(c) => (Some(basic_header(c)), Sent::Basic),
                None => (None, Sent::Nothing),
            });
        };
        let fetch = self.fetch_token(key.clone(), credential);
        let (token, cached) = self
            .tokens
            .get_or_fetch(key.clone(), fetch)
            .await
            .map_err(FetchError::Token)?;
        let mut value = HeaderValue::from_str(&format!("Bearer {}", token.value()))
            .expect("token characters were checked when it was parsed");
        value.set_sensitive(true);
        Ok((
            Some(value),
            if cached {
                Sent::CachedToken(key)
            } else {
                Sent::FreshToken(key)
            },
        ))
    }

    async fn fetch_token(
        &self,
        key: TokenKey,
        credential: Option<&Credential>,
    ) -> Result<Token, TokenError> {
        let realm = key.realm.clone();
        let mut url = Url::parse(&realm).map_err(|e| TokenError::Malformed {
            realm: realm.clone(),
            reason: e.to_string(),
        })?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(service) = &key.service {
                q.append_pair("service", service);
            }
            for scope in &key.scopes {
                q.append_pair("scope", scope);
            }
        }
        let shown = display_url(&url);
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let auth = credential.map(basic_header);
        let mut resp = self
            .transport
            .send(&Method::GET, &url, &headers, auth.as_ref(), self.exchange)
            .await
            .map_err(|e| match e {
                FetchError::Timeout { .. } => TokenError::Timeout {
                    realm: shown.clone(),
                },
                FetchError::Egress { refused, .. } => TokenError::Egress {
                    realm: shown.clone(),
                    reason: refused.to_string(),
                },
                other => TokenError::Transport {
                    realm: shown.clone(),
                    reason: other.to_string(),
                },
            })?;
        let status = resp.status();
        let limit = if status.is_success() {
            token::MAX_TOKEN_BODY
        } else {
            MAX_ERROR_BODY
        };
        let body = resp
            .read_body(limit)
            .await
            .map(|body| body.bytes)
            .map_err(|e| match e {
                FetchError::Timeout { .. } => TokenError::Timeout {
                    realm: shown.clone(),
                },
                FetchError::TooLarge { limit, .. } => TokenError::Malformed {
                    realm: shown.clone(),
                    reason: format!("the answer is larger than {limit} bytes"),
                },
                other => TokenError::Transport {
                    realm: shown.clone(),
                    reason: other.to_string(),
                },
            })?;
        if !status.is_success() {
            return Err(TokenError::Refused {
                realm: shown,
                status: status.as_u16(),
                message: RegistryMessage::from_body(&body),
            });
        }
        let token = token::parse_token_response(&shown, &body)?;
        tracing::debug!(realm = %shown, lifetime = ?token.lifetime(), "fetched registry token");
        Ok(token)
    }
}

fn basic_header(c: &Credential) -> HeaderValue {
    let raw = format!("{}:{}", c.username(), c.password());
    let mut v = HeaderValue::from_str(&format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    ))
    .expect("base64 is a valid header value");
    v.set_sensitive(true);
    v
}
