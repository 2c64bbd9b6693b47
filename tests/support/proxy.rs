//! A reverse proxy that puts "policy" in front of a real registry (Harbor's 412, Artifactory's
//! 403, blob redirects, stalls) and a CDN that behaves like a presigned S3 URL. Both record
//! what they were sent so tests can assert what the probe did, not only what it concluded.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::hub::Accounting;
use super::pki::{Pki, Protocols, test_client};
use super::registry::Registry;
use super::server::{ConnectionId, TestServer, serve_tls};

/// One request as a [`PolicyProxy`] or [`Cdn`] received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub authorization: Option<String>,
    pub range: Option<String>,
    /// Every header, for what the fields above do not name.
    pub headers: axum::http::HeaderMap,
    /// The connection it came on.
    pub connection: Option<ConnectionId>,
}

#[derive(Clone, Debug)]
pub struct Rule {
    /// `None` matches every method.
    pub method: Option<Method>,
    /// Substring of the request path (query excluded); "" matches everything. A leading `=`
    /// asks for the whole path to be equal instead (`"=/v2/"` is the ping only).
    pub path_contains: String,
    pub action: Action,
}

impl Rule {
    pub fn new(method: Option<Method>, path_contains: &str, action: Action) -> Rule {
        Rule {
            method,
            path_contains: path_contains.to_string(),
            action,
        }
    }

    fn matches(&self, method: &Method, path: &str) -> bool {
        self.method.as_ref().is_none_or(|m| m == method) && path_matches(&self.path_contains, path)
    }
}

/// `pattern` is a substring of `path`, or with a leading `=`, all of it.
fn path_matches(pattern: &str, path: &str) -> bool {
    match pattern.strip_prefix('=') {
        Some(exact) => path == exact,
        None => path.contains(pattern),
    }
}

#[derive(Clone, Debug)]
pub enum Action {
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Like [`Action::Respond`], but the body follows its head `pause` later, in a packet
    /// of its own, as from a proxy relaying an upstream's answer.
    RespondSlowly {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
        pause: Duration,
    },
    /// 307 to `base` + the original path and query, like a registry handing blobs to a CDN.
    RedirectTo { base: String },
    /// Never answers; the connection stays open until the server is dropped.
    Stall,
    /// Waits, then handles the request as if no rule matched (a slow registry).
    Delay(Duration),
}

impl Action {
    pub fn json(status: u16, body: &str) -> Action {
        Action::Respond {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.to_string(),
        }
    }

    /// What Harbor answers when a project policy (vulnerability gate, unsigned image)
    /// blocks a pull.
    pub fn harbor_policy_violation(message: &str) -> Action {
        Action::json(
            412,
            &serde_json::json!({
                "errors": [{ "code": "PROJECTPOLICYVIOLATION", "message": message }]
            })
            .to_string(),
        )
    }

    /// What Artifactory/Nexus-style registries answer for a download-blocked artifact.
    pub fn denied(message: &str) -> Action {
        Action::json(
            403,
            &serde_json::json!({ "errors": [{ "code": "DENIED", "message": message }] })
                .to_string(),
        )
    }
}

/// Rules plus the request log, shared by the proxy and the CDN.
#[derive(Default)]
struct Policy {
    /// Each rule with how many more times it may fire (`None` = forever).
    rules: Mutex<Vec<(Rule, Option<usize>)>>,
    seen: Mutex<Vec<Seen>>,
}

impl Policy {
    fn add(&self, rule: Rule, times: Option<usize>) {
        self.rules.lock().unwrap().push((rule, times));
    }

    fn record(&self, parts: &axum::http::request::Parts) {
        let (method, uri, headers) = (&parts.method, &parts.uri, &parts.headers);
        let text = |name: HeaderName| {
            headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        self.seen.lock().unwrap().push(Seen {
            method: method.clone(),
            path: uri.path().to_string(),
            query: uri.query().map(str::to_string),
            authorization: text(header::AUTHORIZATION),
            range: text(header::RANGE),
            headers: headers.clone(),
            connection: parts.extensions.get::<ConnectionId>().copied(),
        });
    }

    fn matching_action(&self, method: &Method, path: &str) -> Option<Action> {
        let mut rules = self.rules.lock().unwrap();
        for (rule, remaining) in rules.iter_mut() {
            if remaining == &Some(0) || !rule.matches(method, path) {
                continue;
            }
            if let Some(n) = remaining {
                *n -= 1;
            }
            return Some(rule.action.clone());
        }
        None
    }

    fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn count(&self, path_contains: &str) -> usize {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|s| path_matches(path_contains, &s.path))
            .count()
    }
}

async fn apply(action: Action, uri: &axum::http::Uri) -> Response {
    match action {
        Action::Respond {
            status,
            headers,
            body,
        } => {
            let mut response = Response::builder()
                .status(StatusCode::from_u16(status).expect("valid status code"));
            for (name, value) in headers {
                response = response.header(name, value);
            }
            response.body(Body::from(body)).expect("valid response")
        }
        Action::RespondSlowly {
            status,
            headers,
            body,
            pause,
        } => {
            let mut response = Response::builder()
                .status(StatusCode::from_u16(status).expect("valid status code"))
                .header(header::CONTENT_LENGTH, body.len());
            for (name, value) in headers {
                response = response.header(name, value);
            }
            let later = futures_util::stream::once(async move {
                tokio::time::sleep(pause).await;
                Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(body))
            });
            response
                .body(Body::from_stream(later))
                .expect("valid response")
        }
        Action::RedirectTo { base } => {
            let target = format!(
                "{}{}",
                base.trim_end_matches('/'),
                uri.path_and_query().map_or("/", |p| p.as_str())
            );
            (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, target)]).into_response()
        }
        // The proxy forwards after the delay; elsewhere a delayed request finds nothing.
        Action::Delay(by) => {
            tokio::time::sleep(by).await;
            StatusCode::NOT_FOUND.into_response()
        }
        Action::Stall => {
            // An hour is "forever" for a test; the runtime drops this when the test ends.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
    )
}

pub struct PolicyProxy {
    server: TestServer,
    state: Arc<ProxyState>,
}

struct ProxyState {
    upstream_base: String,
    client: reqwest::Client,
    policy: Policy,
    /// Known only after binding; used to rewrite upstream self-references.
    own_base: OnceLock<String>,
    /// Docker Hub's pull accounting, when the proxy plays Docker Hub.
    accounting: Option<Arc<Accounting>>,
}

impl PolicyProxy {
    pub async fn start(pki: &Pki, upstream: &Registry) -> PolicyProxy {
        Self::start_for(pki, &upstream.base()).await
    }

    /// Fronts any HTTPS server signed by `pki` (a token server, a CDN, another proxy).
    pub async fn start_for(pki: &Pki, upstream_base: &str) -> PolicyProxy {
        Self::start_with(pki, upstream_base, None, Protocols::default()).await
    }

    /// [`PolicyProxy::start_for`] offering its clients only `protocols`.
    pub async fn start_for_speaking(
        pki: &Pki,
        upstream_base: &str,
        protocols: Protocols,
    ) -> PolicyProxy {
        Self::start_with(pki, upstream_base, None, protocols).await
    }

    /// Fronts `upstream` the way Docker Hub meters pulls (see [`Accounting`]).
    pub async fn start_metered(
        pki: &Pki,
        upstream: &Registry,
        accounting: Arc<Accounting>,
    ) -> PolicyProxy {
        Self::start_with(
            pki,
            &upstream.base(),
            Some(accounting),
            Protocols::default(),
        )
        .await
    }

    async fn start_with(
        pki: &Pki,
        upstream_base: &str,
        accounting: Option<Arc<Accounting>>,
        protocols: Protocols,
    ) -> PolicyProxy {
        let state = Arc::new(ProxyState {
            upstream_base: upstream_base.trim_end_matches('/').to_string(),
            client: test_client(pki),
            policy: Policy::default(),
            own_base: OnceLock::new(),
            accounting,
        });
        let router = Router::new()
            .fallback(proxy_handler)
            .with_state(state.clone());
        let tls = pki.server_tls_speaking(&["127.0.0.1", "localhost"], protocols);
        let server = serve_tls(router, tls).await;
        state
            .own_base
            .set(server.base())
            .expect("own_base set once");
        PolicyProxy { server, state }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.addr
    }

    pub fn host(&self) -> String {
        self.server.host()
    }

    pub fn base(&self) -> String {
        self.server.base()
    }

    pub fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    /// Adds a rule after the existing ones; the first matching rule wins.
    pub fn rule(&self, rule: Rule) {
        self.state.policy.add(rule, None);
    }

    /// Like [`PolicyProxy::rule`] but the rule stops matching after `times` hits, e.g. for
    /// "the first manifest GET stalls, the retry works".
    pub fn rule_times(&self, rule: Rule, times: usize) {
        self.state.policy.add(rule, Some(times));
    }

    pub fn clear_rules(&self) {
        self.state.policy.rules.lock().unwrap().clear();
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.state.policy.requests()
    }

    pub fn count(&self, path_contains: &str) -> usize {
        self.state.policy.count(path_contains)
    }

    /// The connections its clients opened and closed (see [`TestServer`]).
    pub fn server(&self) -> &TestServer {
        &self.server
    }
}

async fn proxy_handler(State(state): State<Arc<ProxyState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    state.policy.record(&parts);
    if let Some(action) = state
        .policy
        .matching_action(&parts.method, parts.uri.path())
    {
        match action {
            Action::Delay(by) => tokio::time::sleep(by).await,
            other => return apply(other, &parts.uri).await,
        }
    }
    if let Some(refused) = state
        .accounting
        .as_ref()
        .and_then(|a| a.before(&parts.method, parts.uri.path(), &parts.headers))
    {
        return refused;
    }

    // Request bodies are manifests and small test blobs, so buffering them is fine and
    // avoids needing reqwest's `stream` feature just for tests.
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(body) => body,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let target = format!(
        "{}{}",
        state.upstream_base,
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut upstream = state.client.request(parts.method.clone(), &target);
    for (name, value) in &parts.headers {
        if !is_hop_by_hop(name) && name != header::CONTENT_LENGTH {
            upstream = upstream.header(name, value);
        }
    }
    let response = match upstream.body(body).send().await {
        Ok(response) => response,
        Err(e) => {
            return (
                StatusCode::BAD_GATEWAY,
                format!("policy proxy: upstream {target}: {e}"),
            )
                .into_response();
        }
    };

    let own_base = state.own_base.get().map_or("", String::as_str);
    let mut builder = Response::builder().status(response.status());
    if let Some(accounting) = &state.accounting {
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        for (name, value) in accounting.after(
            &parts.method,
            parts.uri.path(),
            &parts.headers,
            response.status(),
            content_type,
        ) {
            builder = builder.header(name, value);
        }
    }
    for (name, value) in response.headers() {
        if is_hop_by_hop(name) {
            continue;
        }
        // distribution builds absolute URLs from the Host header it saw, which is the
        // upstream's; point them back at the proxy so clients keep going through it.
        let value = if *name == header::LOCATION || *name == header::WWW_AUTHENTICATE {
            match value.to_str() {
                Ok(text) if text.contains(&state.upstream_base) => {
                    HeaderValue::from_str(&text.replace(&state.upstream_base, own_base))
                        .unwrap_or_else(|_| value.clone())
                }
                _ => value.clone(),
            }
        } else {
            value.clone()
        };
        builder = builder.header(name, value);
    }
    let stream = futures_util::stream::unfold(Some(response), |response| async move {
        let mut response = response?;
        match response.chunk().await {
            Ok(Some(chunk)) => Some((Ok(chunk), Some(response))),
            Ok(None) => None,
            // Report the error once, then end: hyper resets the stream on a body error.
            Err(e) => Some((Err(e), None)),
        }
    });
    builder
        .body(Body::from_stream(stream))
        .expect("valid proxied response")
}

/// A blob CDN / presigned S3 URL. It answers `GET|HEAD .../blobs/sha256:<hex>` from its
/// in-memory map or from the filesystem storage of a registry, and refuses requests that
/// carry `Authorization` the way S3 does for presigned URLs. It does not care about the
/// repository part of the path or the query string.
pub struct Cdn {
    server: TestServer,
    state: Arc<CdnState>,
}

struct CdnState {
    storage: Option<PathBuf>,
    blobs: Mutex<HashMap<String, Vec<u8>>>,
    policy: Policy,
}

impl Cdn {
    /// With `upstream`, blobs are read straight from that registry's storage directory
    /// (distribution's on-disk layout), which works whatever auth the registry has.
    pub async fn start(pki: &Pki, upstream: Option<&Registry>) -> Cdn {
        Self::start_speaking(pki, upstream, Protocols::default()).await
    }

    /// [`Cdn::start`] offering its clients only `protocols`.
    pub async fn start_speaking(
        pki: &Pki,
        upstream: Option<&Registry>,
        protocols: Protocols,
    ) -> Cdn {
        let state = Arc::new(CdnState {
            storage: upstream.map(|r| r.storage.clone()),
            blobs: Mutex::new(HashMap::new()),
            policy: Policy::default(),
        });
        let router = Router::new()
            .fallback(cdn_handler)
            .with_state(state.clone());
        let tls = pki.server_tls_speaking(&["127.0.0.1", "localhost"], protocols);
        let server = serve_tls(router, tls).await;
        Cdn { server, state }
    }

    pub fn host(&self) -> String {
        self.server.host()
    }

    pub fn base(&self) -> String {
        self.server.base()
    }

    pub fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    pub fn insert_blob(&self, digest: &str, bytes: Vec<u8>) {
        self.state
            .blobs
            .lock()
            .unwrap()
            .insert(digest.to_string(), bytes);
    }

    /// Rules are checked before the Authorization check, e.g. to emulate an expired
    /// signature (403) or a stalled CDN edge.
    pub fn rule(&self, rule: Rule) {
        self.state.policy.add(rule, None);
    }

    pub fn rule_times(&self, rule: Rule, times: usize) {
        self.state.policy.add(rule, Some(times));
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.state.policy.requests()
    }

    pub fn count(&self, path_contains: &str) -> usize {
        self.state.policy.count(path_contains)
    }
}

fn s3_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message><RequestId>PULLGATETEST</RequestId></Error>"
    );
    (status, [(header::CONTENT_TYPE, "application/xml")], body).into_response()
}

async fn cdn_handler(State(state): State<Arc<CdnState>>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    state.policy.record(&parts);
    if let Some(action) = state
        .policy
        .matching_action(&parts.method, parts.uri.path())
    {
        return apply(action, &parts.uri).await;
    }
    if parts.headers.contains_key(header::AUTHORIZATION) {
        // The exact S3 answer when a presigned URL is fetched with a registry token attached.
        return s3_error(
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string parameter or the Authorization header should be specified",
        );
    }
    if parts.method != Method::GET && parts.method != Method::HEAD {
        return s3_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "The specified method is not allowed against this resource.",
        );
    }
    let Some(digest) = parts
        .uri
        .path()
        .rsplit_once("/blobs/")
        .map(|(_, d)| d.to_string())
    else {
        return s3_error(
            StatusCode::NOT_FOUND,
            "NoSuchKey",
            "The specified key does not exist.",
        );
    };
    let Some(blob) = state.load(&digest).await else {
        return s3_error(
            StatusCode::NOT_FOUND,
            "NoSuchKey",
            "The specified key does not exist.",
        );
    };

    let total = blob.len();
    let range = parts
        .headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|r| parse_range(r, total));
    let (status, body, content_range) = match range {
        None => (StatusCode::OK, blob, None),
        Some(Some((start, end))) => (
            StatusCode::PARTIAL_CONTENT,
            blob[start..=end].to_vec(),
            Some(format!("bytes {start}-{end}/{total}")),
        ),
        // S3 answers 416 for any range on an empty object, including bytes=0-0.
        Some(None) => {
            let mut response = s3_error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "InvalidRange",
                "The requested range is not satisfiable",
            );
            response.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{total}")).expect("ascii"),
            );
            return response;
        }
    };
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, format!("\"{digest}\""))
        .header(header::CONTENT_LENGTH, body.len());
    if let Some(content_range) = content_range {
        response = response.header(header::CONTENT_RANGE, content_range);
    }
    let body = if parts.method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(body)
    };
    response.body(body).expect("valid CDN response")
}

impl CdnState {
    async fn load(&self, digest: &str) -> Option<Vec<u8>> {
        if let Some(blob) = self.blobs.lock().unwrap().get(digest) {
            return Some(blob.clone());
        }
        let hex = digest.strip_prefix("sha256:")?;
        // Validating the hex also keeps a crafted path from escaping the storage dir.
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let path = self
            .storage
            .as_ref()?
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data");
        tokio::fs::read(path).await.ok()
    }
}

/// Parses a single `bytes=` range against `total`; `None` means unsatisfiable.
fn parse_range(value: &str, total: usize) -> Option<(usize, usize)> {
    let spec = value.trim().strip_prefix("bytes=")?;
    let (start, end) = spec.split_once('-')?;
    if total == 0 {
        return None;
    }
    let (start, end) = if start.is_empty() {
        let suffix: usize = end.parse().ok()?;
        (total.saturating_sub(suffix), total - 1)
    } else {
        let start: usize = start.parse().ok()?;
        let end = if end.is_empty() {
            total - 1
        } else {
            end.parse::<usize>().ok()?.min(total - 1)
        };
        (start, end)
    };
    (start <= end && start < total).then_some((start, end))
}
