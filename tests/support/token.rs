//! A Docker token-auth server (distribution's token spec) whose grants tests set at run
//! time, with tokens that a real distribution 2.8 registry accepts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rcgen::{CertificateParams, DnType, KeyPair};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use serde_json::{Value, json};

use super::image::random_bytes;
use super::pki::{Pki, Protocols};
use super::registry::RegistryAuth;
use super::server::{TestServer, serve_tls};

pub const TOKEN_SERVICE: &str = "pullgate-test-registry";
pub const TOKEN_ISSUER: &str = "pullgate-test-issuer";

/// Which JSON field(s) carry the token: Docker Hub sends both, some registries only one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenStyle {
    Token,
    AccessToken,
    Both,
}

/// One `/token` call as the server saw it (never the password).
#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub method: Method,
    pub user: Option<String>,
    pub service: Option<String>,
    pub scopes: Vec<String>,
}

pub struct TokenServer {
    server: TestServer,
    state: Arc<TokenState>,
}

struct TokenState {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    cert_der: Vec<u8>,
    cert_pem: String,
    inner: Mutex<TokenInner>,
}

struct TokenInner {
    passwords: HashMap<String, String>,
    grants: Vec<Grant>,
    style: TokenStyle,
    expires_in: Option<i64>,
    post_enabled: bool,
    log: Vec<TokenRequest>,
}

struct Grant {
    user: Option<String>,
    repo: String,
    actions: Vec<String>,
}

impl TokenServer {
    pub async fn start(pki: &Pki) -> TokenServer {
        Self::start_speaking(pki, Protocols::default()).await
    }

    /// [`TokenServer::start`] offering its clients only `protocols`.
    pub async fn start_speaking(pki: &Pki, protocols: Protocols) -> TokenServer {
        // The signing certificate is deliberately not from the test CA: distribution trusts
        // only `rootcertbundle`, and keeping the two apart catches mixing them up.
        let signing = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("signing key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, "pullgate test token signer");
        let cert = params.self_signed(&signing).expect("self-sign token cert");
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &signing.serialize_der(),
            &rng,
        )
        .expect("ring accepts rcgen's PKCS#8");
        let state = Arc::new(TokenState {
            key,
            rng,
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
            inner: Mutex::new(TokenInner {
                passwords: HashMap::new(),
                grants: Vec::new(),
                style: TokenStyle::Token,
                expires_in: Some(300),
                post_enabled: true,
                log: Vec::new(),
            }),
        });
        let router = Router::new()
            .route("/token", axum::routing::get(token_get).post(token_post))
            .with_state(state.clone());
        let tls = pki.server_tls_speaking(&["127.0.0.1", "localhost"], protocols);
        let server = serve_tls(router, tls).await;
        TokenServer { server, state }
    }

    pub fn realm(&self) -> String {
        self.server.url("/token")
    }

    pub fn host(&self) -> String {
        self.server.host()
    }

    pub fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    pub fn signing_cert_pem(&self) -> &str {
        &self.state.cert_pem
    }

    pub fn registry_auth(&self) -> RegistryAuth {
        RegistryAuth::Token {
            realm: self.realm(),
            service: TOKEN_SERVICE.to_string(),
            issuer: TOKEN_ISSUER.to_string(),
            rootcertbundle_pem: self.state.cert_pem.clone(),
        }
    }

    /// Lets `user` (None = everyone, like a public repository) do `actions` on `repo`;
    /// `repo` may end in `*` to cover a prefix ("team/*"). Giving a user also sets its
    /// password.
    pub fn grant(&self, user: Option<(&str, &str)>, repo: &str, actions: &[&str]) {
        let mut inner = self.state.inner.lock().unwrap();
        if let Some((name, password)) = user {
            inner
                .passwords
                .insert(name.to_string(), password.to_string());
        }
        inner.grants.push(Grant {
            user: user.map(|(name, _)| name.to_string()),
            repo: repo.to_string(),
            actions: actions.iter().map(|a| a.to_string()).collect(),
        });
    }

    /// A user whose credentials are valid but who has no grants (yet).
    pub fn add_user(&self, user: &str, password: &str) {
        self.state
            .inner
            .lock()
            .unwrap()
            .passwords
            .insert(user.to_string(), password.to_string());
    }

    pub fn set_response_style(&self, style: TokenStyle) {
        self.state.inner.lock().unwrap().style = style;
    }

    /// `None` omits `expires_in` from the response (clients must then assume 60 s).
    pub fn set_expires_in(&self, expires_in: Option<i64>) {
        self.state.inner.lock().unwrap().expires_in = expires_in;
    }

    /// When disabled, POST /token (the OAuth2 password grant containerd tries first)
    /// answers 405, like registries that only implement the GET flow.
    pub fn set_post_enabled(&self, enabled: bool) {
        self.state.inner.lock().unwrap().post_enabled = enabled;
    }

    pub fn requests(&self) -> usize {
        self.state.inner.lock().unwrap().log.len()
    }

    pub fn seen_users(&self) -> Vec<Option<String>> {
        let inner = self.state.inner.lock().unwrap();
        inner.log.iter().map(|r| r.user.clone()).collect()
    }

    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.state.inner.lock().unwrap().log.clone()
    }

    /// Signs a token with arbitrary claims (expired, wrong audience, ...) for negative tests.
    pub fn sign_claims(&self, claims: &Value) -> String {
        self.state.sign(claims)
    }

    /// A valid token for `user` with the given `(repo, actions)` access entries, bypassing
    /// the grant table.
    pub fn mint(&self, user: Option<&str>, access: &[(&str, &[&str])]) -> String {
        let access: Vec<Value> = access
            .iter()
            .map(
                |(name, actions)| json!({ "type": "repository", "name": name, "actions": actions }),
            )
            .collect();
        self.state.sign(&claims(user, access))
    }
}

impl TokenState {
    fn sign(&self, claims: &Value) -> String {
        let header = json!({
            "typ": "JWT",
            "alg": "ES256",
            // x5c is standard (padded) base64 per RFC 7515, unlike the JWT segments.
            "x5c": [STANDARD.encode(&self.cert_der)],
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).expect("header json")),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims json")),
        );
        // FIXED = raw r||s, which is what JWS ES256 mandates (not ASN.1 DER).
        let signature = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .expect("ECDSA sign");
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        )
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

fn claims(user: Option<&str>, access: Vec<Value>) -> Value {
    let now = now();
    json!({
        "iss": TOKEN_ISSUER,
        "sub": user.unwrap_or(""),
        // distribution 2.8 declares `aud` as a single string, so no array here.
        "aud": TOKEN_SERVICE,
        "exp": now + 300,
        "nbf": now - 10,
        "iat": now,
        "jti": URL_SAFE_NO_PAD.encode(random_bytes(16)),
        "access": access,
    })
}

fn repo_matches(pattern: &str, repo: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => repo.starts_with(prefix),
        None => pattern == repo,
    }
}

/// `type:name:actions`; the name may itself contain colons (e.g. a port in a proxy-cache
/// name), so split on the first and last one only.
fn parse_scope(scope: &str) -> Option<(&str, &str, Vec<&str>)> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    Some((
        kind,
        name,
        actions.split(',').filter(|a| !a.is_empty()).collect(),
    ))
}

enum Caller {
    Anonymous,
    User(String),
    BadCredentials(Option<String>),
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"errors":[{"code":"UNAUTHORIZED","message":"invalid credentials"}]}"#,
    )
        .into_response()
}

async fn token_get(
    State(state): State<Arc<TokenState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let params: Vec<(String, String)> =
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let caller = match headers.get(header::AUTHORIZATION) {
        None => Caller::Anonymous,
        Some(value) => basic_caller(&state, value.to_str().unwrap_or("")),
    };
    respond(&state, Method::GET, caller, &params)
}

async fn token_post(State(state): State<Arc<TokenState>>, body: String) -> Response {
    if !state.inner.lock().unwrap().post_enabled {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let params: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let get = |key: &str| {
        params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let caller = match (
        get("grant_type").as_deref(),
        get("username"),
        get("password"),
    ) {
        (Some("password"), Some(user), Some(password)) => check_password(&state, user, &password),
        // Refresh tokens are not issued, so any other grant is a credential failure.
        _ => Caller::BadCredentials(get("username")),
    };
    respond(&state, Method::POST, caller, &params)
}

fn basic_caller(state: &TokenState, value: &str) -> Caller {
    let Some(encoded) = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
    else {
        return Caller::BadCredentials(None);
    };
    let Some(decoded) = STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|d| String::from_utf8(d).ok())
    else {
        return Caller::BadCredentials(None);
    };
    let Some((user, password)) = decoded.split_once(':') else {
        return Caller::BadCredentials(None);
    };
    check_password(state, user.to_string(), password)
}

fn check_password(state: &TokenState, user: String, password: &str) -> Caller {
    let inner = state.inner.lock().unwrap();
    if inner.passwords.get(&user).map(String::as_str) == Some(password) {
        Caller::User(user)
    } else {
        Caller::BadCredentials(Some(user))
    }
}

fn respond(
    state: &TokenState,
    method: Method,
    caller: Caller,
    params: &[(String, String)],
) -> Response {
    let scopes: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        // A single scope parameter may hold several space-separated scopes.
        .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
        .filter(|s| !s.is_empty())
        .collect();
    let service = params
        .iter()
        .find(|(k, _)| k == "service")
        .map(|(_, v)| v.clone());
    let mut inner = state.inner.lock().unwrap();
    let user = match &caller {
        Caller::Anonymous => None,
        Caller::User(u) => Some(u.clone()),
        Caller::BadCredentials(u) => u.clone(),
    };
    inner.log.push(TokenRequest {
        method: method.clone(),
        user: user.clone(),
        service,
        scopes: scopes.clone(),
    });
    if matches!(caller, Caller::BadCredentials(_)) {
        return unauthorized();
    }

    let mut access = Vec::new();
    for scope in &scopes {
        let Some(("repository", name, requested)) = parse_scope(scope) else {
            continue;
        };
        let granted: Vec<&str> = requested
            .into_iter()
            .filter(|action| {
                inner.grants.iter().any(|g| {
                    (g.user.is_none() || g.user == user)
                        && repo_matches(&g.repo, name)
                        && g.actions.iter().any(|a| a == action || a == "*")
                })
            })
            .collect();
        // Like real token servers: ungranted scopes are silently dropped, not refused.
        if !granted.is_empty() {
            access.push(json!({ "type": "repository", "name": name, "actions": granted }));
        }
    }
    let token = state.sign(&claims(user.as_deref(), access));

    let mut body = json!({ "issued_at": rfc3339(now()) });
    match inner.style {
        TokenStyle::Token => body["token"] = json!(token),
        TokenStyle::AccessToken => body["access_token"] = json!(token),
        TokenStyle::Both => {
            body["token"] = json!(token);
            body["access_token"] = json!(token);
        }
    }
    if let Some(expires_in) = inner.expires_in {
        body["expires_in"] = json!(expires_in);
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// UTC RFC 3339 from Unix seconds, via Howard Hinnant's days-to-civil algorithm, to avoid a
/// date crate just for `issued_at`.
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
