//! Docker Hub's pull accounting, for a [`super::proxy::PolicyProxy`] in front of a real
//! registry: every manifest GET that serves a manifest is a pull of the account that sent it
//! (the token's subject, the Basic user, or "" for anonymous), an index and the first child
//! GOT after it together one; HEADs and blobs are free. Manifest answers carry
//! `ratelimit-limit` / `ratelimit-remaining` (`N;w=SECONDS`); past the limit a manifest GET gets
//! 429 `TOOMANYREQUESTS`, as Docker Hub answers.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

/// What one account did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Account {
    /// Manifest GETs received (served or not).
    pub gets: u32,
    pub heads: u32,
    /// Pulls counted.
    pub pulls: u32,
    /// Manifest GETs refused with 429.
    pub refused: u32,
    /// The last counted GET served an index, so the next child GET is part of its pull.
    index_open: bool,
}

pub struct Accounting {
    limit: u32,
    window_s: u64,
    accounts: Mutex<HashMap<String, Account>>,
}

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

fn is_manifest(path: &str) -> bool {
    path.starts_with("/v2/") && path.contains("/manifests/")
}

impl Accounting {
    pub fn new(limit: u32, window_s: u64) -> Accounting {
        Accounting {
            limit,
            window_s,
            accounts: Mutex::default(),
        }
    }

    /// Who sent a request: the subject of a Bearer JWT, the user of Basic, "" when neither.
    pub fn account_of(headers: &HeaderMap) -> String {
        let Some(auth) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return String::new();
        };
        if let Some(token) = auth.strip_prefix("Bearer ") {
            let payload = token.split('.').nth(1).unwrap_or_default();
            return URL_SAFE_NO_PAD
                .decode(payload)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v["sub"].as_str().map(str::to_owned))
                .unwrap_or_default();
        }
        if let Some(basic) = auth.strip_prefix("Basic ") {
            let decoded = STANDARD.decode(basic).unwrap_or_default();
            let text = String::from_utf8_lossy(&decoded);
            return text.split(':').next().unwrap_or_default().to_owned();
        }
        String::new()
    }

    /// What `who` did so far.
    pub fn account(&self, who: &str) -> Account {
        self.accounts
            .lock()
            .unwrap()
            .get(who)
            .cloned()
            .unwrap_or_default()
    }

    /// Pulls other clients of `who`'s address or account (the nodes) spent.
    pub fn spend(&self, who: &str, pulls: u32) {
        self.accounts
            .lock()
            .unwrap()
            .entry(who.to_owned())
            .or_default()
            .pulls += pulls;
    }

    fn headers(&self, pulls: u32) -> [(&'static str, HeaderValue); 2] {
        let w = self.window_s;
        let value = |n: u32| HeaderValue::from_str(&format!("{n};w={w}")).unwrap();
        [
            ("ratelimit-limit", value(self.limit)),
            (
                "ratelimit-remaining",
                value(self.limit.saturating_sub(pulls)),
            ),
        ]
    }

    /// Before forwarding: a manifest GET past the limit is refused here.
    pub(super) fn before(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<Response> {
        if *method != Method::GET || !is_manifest(path) {
            return None;
        }
        let who = Self::account_of(headers);
        let mut accounts = self.accounts.lock().unwrap();
        let account = accounts.entry(who).or_default();
        if account.pulls < self.limit {
            return None;
        }
        account.gets += 1;
        account.refused += 1;
        let body = serde_json::json!({"errors": [{
            "code": "TOOMANYREQUESTS",
            "message": "You have reached your unauthenticated pull rate limit. https://www.docker.com/increase-rate-limit"
        }]});
        let mut response = Response::builder()
            .status(StatusCode::TOO_MANY_REQUESTS)
            .header(header::CONTENT_TYPE, "application/json");
        for (name, value) in self.headers(account.pulls) {
            response = response.header(name, value);
        }
        Some(response.body(Body::from(body.to_string())).unwrap())
    }

    /// After the registry answered: counts the request and gives the headers to add.
    pub(super) fn after(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        status: StatusCode,
        content_type: Option<&str>,
    ) -> Vec<(&'static str, HeaderValue)> {
        if !is_manifest(path) {
            return Vec::new();
        }
        let who = Self::account_of(headers);
        let mut accounts = self.accounts.lock().unwrap();
        let account = accounts.entry(who).or_default();
        if *method == Method::HEAD {
            account.heads += 1;
        } else if *method == Method::GET {
            account.gets += 1;
            if status.is_success() {
                let by_digest = path.contains("/manifests/sha256:");
                let index =
                    content_type.is_some_and(|t| INDEX_TYPES.iter().any(|i| t.starts_with(i)));
                if by_digest && account.index_open && !index {
                    account.index_open = false;
                } else {
                    account.pulls += 1;
                    account.index_open = index;
                }
            }
        }
        self.headers(account.pulls).into_iter().collect()
    }
}
