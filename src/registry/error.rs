//! Why a registry request did not give an answer worth classifying by its status. Each
//! variant carries the URL (without its query: presigned URLs carry signatures) and what went
//! wrong; which verdict each means is the probe's business, not this layer's.

use std::sync::Arc;

use url::Url;

use super::challenge::ChallengeError;
use super::egress::Refused;
use super::message::RegistryMessage;
use super::slots::OutOfDescriptors;
use super::token::TokenError;

/// Redirects followed for one request (blob → CDN → presigned URL is two).
pub const MAX_REDIRECTS: usize = 5;

/// Why a request did not produce a response worth classifying by status.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot reach {url}: {reason}")]
    Transport { url: String, reason: String },
    #[error("{url} did not answer in time")]
    Timeout { url: String },
    #[error("more than {MAX_REDIRECTS} redirects from {url}")]
    TooManyRedirects { url: String },
    #[error("refused redirect from {url}: {reason}")]
    Redirect { url: String, reason: String },
    #[error("{url} sent an unusable auth challenge: {source}")]
    Challenge {
        url: String,
        #[source]
        source: ChallengeError,
    },
    #[error("refused token realm {realm}: {reason}")]
    Realm { realm: String, reason: String },
    #[error(transparent)]
    Token(Arc<TokenError>),
    #[error("{url} sent more than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("refused to connect for {url}: {refused}")]
    Egress { url: String, refused: Refused },
    #[error(
        "{host} asked clients to back off (HTTP 429) for {seconds} more second(s); not asked again until then"
    )]
    Backoff { host: String, seconds: u64 },
    #[error("cannot connect for {url}: {source}")]
    Descriptors {
        url: String,
        #[source]
        source: OutOfDescriptors,
    },
    #[error("no connection to {url} became free in time: {reason}")]
    Busy { url: String, reason: &'static str },
    /// The server answered the TLS handshake in plain HTTP: a plain-HTTP registry.
    #[error("{host} answered in plain HTTP, not TLS: it is a plain-HTTP registry")]
    PlainHttp { url: String, host: String },
}

impl FetchError {
    /// The registry's (or token endpoint's) own words, when it sent any.
    pub fn registry_message(&self) -> Option<&RegistryMessage> {
        match self {
            FetchError::Token(e) => match &**e {
                TokenError::Refused { message, .. } if !message.is_empty() => Some(message),
                _ => None,
            },
            _ => None,
        }
    }
}

/// A URL for messages and logs: no query string, which may carry a presigned signature.
pub fn display_url(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

pub(super) fn describe(e: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut cur: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        // reqwest's own top message repeats the URL with its query; ours is redacted.
        if !s.starts_with("error sending request") && !parts.contains(&s) {
            parts.push(s);
        }
        cur = err.source();
    }
    if parts.is_empty() {
        "request failed".to_owned()
    } else {
        parts.join(": ")
    }
}

/// Whether `err` is rustls' word for a TLS record that is not one: the server spoke plain
/// HTTP (its answer starts "HTTP/1.1 400"). An `io::Error` hides what it wraps from
/// `source()`, so it is looked into.
fn is_plain_http(err: &(dyn std::error::Error + 'static)) -> bool {
    let plain = rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType);
    let rustls_error = err.downcast_ref::<rustls::Error>().or_else(|| {
        err.downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    });
    // The connector layers box what they pass on; rustls' own words identify it then.
    rustls_error == Some(&plain) || err.to_string() == plain.to_string()
}

pub(super) fn classify_reqwest(url: &Url, e: &reqwest::Error) -> FetchError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if url.scheme() == "https" && is_plain_http(err) {
            return FetchError::PlainHttp {
                url: display_url(url),
                host: url.authority().to_owned(),
            };
        }
        if let Some(refused) = err.downcast_ref::<Refused>() {
            return FetchError::Egress {
                url: display_url(url),
                refused: refused.clone(),
            };
        }
        if let Some(short) = err.downcast_ref::<OutOfDescriptors>() {
            return FetchError::Descriptors {
                url: display_url(url),
                source: OutOfDescriptors {
                    open: short.open,
                    ceiling: short.ceiling,
                },
            };
        }
        source = err.source();
    }
    if e.is_timeout() {
        FetchError::Timeout {
            url: display_url(url),
        }
    } else {
        FetchError::Transport {
            url: display_url(url),
            reason: describe(e),
        }
    }
}
