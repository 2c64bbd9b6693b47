//! Verdict classes and the mapping from what a registry answered, or what went wrong before
//! it could, to them; and the failure of one part of a probe, which carries the registry's
//! own words with its verdict.

use std::fmt;

use reqwest::StatusCode;
use serde::Serialize;

use crate::oci::digest::Digest;
use crate::registry::TokenError;
use crate::registry::{FetchError, RegistryMessage};

/// Whether an image can be pulled, and if not, whose problem it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The manifest and every blob the node would fetch are served.
    Pullable,
    /// A registry policy refuses the manifest or a blob (403, 412, 451…).
    Blocked,
    /// 401 with every credential that applies, or with none.
    Unauthorized,
    /// The manifest, a blob, or the requested platform does not exist.
    NotFound,
    /// Transient: 429, 5xx, timeouts, connection or TLS failures. Not the image's fault.
    Unavailable,
    /// A bad reference, a malformed or lying manifest, or an unusable document.
    Invalid,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pullable => "pullable",
            Verdict::Blocked => "blocked",
            Verdict::Unauthorized => "unauthorized",
            Verdict::NotFound => "not_found",
            Verdict::Unavailable => "unavailable",
            Verdict::Invalid => "invalid",
        }
    }

    /// Which failure explains an image best when several parts failed: a definitive refusal
    /// beats a transient one, because the transient part might have worked.
    pub fn severity(self) -> u8 {
        match self {
            Verdict::Pullable => 0,
            Verdict::Unavailable => 1,
            Verdict::Invalid => 2,
            Verdict::Unauthorized => 3,
            Verdict::NotFound => 4,
            Verdict::Blocked => 5,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Maps a final HTTP status (after auth retries and redirects) to a verdict.
pub fn classify_status(status: u16, registry: &RegistryMessage) -> Verdict {
    match status {
        200..=299 => Verdict::Pullable,
        401 => Verdict::Unauthorized,
        403 if registry.code.as_deref() == Some("UNAUTHORIZED") => Verdict::Unauthorized,
        402 | 403 | 412 | 451 => Verdict::Blocked,
        404 | 410 => Verdict::NotFound,
        408 | 425 | 429 => Verdict::Unavailable,
        400 | 405 | 406 | 414 | 415 | 422 => Verdict::Invalid,
        400..=499 => Verdict::Unavailable,
        _ => Verdict::Unavailable,
    }
}

/// The verdict a request that gave no answer worth classifying by status means: an outage
/// is `unavailable`; a refused token `unauthorized`; what a registry (or a pod author, through
/// an address the egress guard refuses) did wrong, `invalid`.
pub fn verdict_of(e: &FetchError) -> Verdict {
    match e {
        FetchError::Transport { .. }
        | FetchError::Timeout { .. }
        | FetchError::TooManyRedirects { .. }
        | FetchError::Backoff { .. }
        | FetchError::Descriptors { .. }
        | FetchError::Busy { .. }
        | FetchError::PlainHttp { .. } => Verdict::Unavailable,
        FetchError::Egress { .. } => Verdict::Invalid,
        FetchError::Token(e) => match &**e {
            TokenError::Refused {
                status: 401 | 403, ..
            } => Verdict::Unauthorized,
            TokenError::NoToken { .. }
            | TokenError::Malformed { .. }
            | TokenError::Egress { .. } => Verdict::Invalid,
            _ => Verdict::Unavailable,
        },
        FetchError::Redirect { .. }
        | FetchError::Challenge { .. }
        | FetchError::Realm { .. }
        | FetchError::TooLarge { .. } => Verdict::Invalid,
    }
}

/// Why one part of the probe failed.
#[derive(Clone, Debug)]
pub(super) struct Failure {
    pub(super) verdict: Verdict,
    pub(super) reason: String,
    pub(super) registry: Option<RegistryMessage>,
    pub(super) blob: Option<Digest>,
    /// The HTTP status of the refusal, when it was one.
    pub(super) status: Option<u16>,
    /// Whether the host gave an HTTP answer at all (a status, a body): a runtime that falls
    /// back from https to plain HTTP does so only when it did not.
    pub(super) answered: bool,
}

impl Failure {
    pub(super) fn new(verdict: Verdict, reason: impl Into<String>) -> Self {
        Failure {
            verdict,
            reason: reason.into(),
            registry: None,
            blob: None,
            status: None,
            answered: true,
        }
    }

    pub(super) fn from_fetch(what: &str, e: &FetchError) -> Self {
        let mut reason = format!("{what}: {e}");
        if let FetchError::PlainHttp { host, .. } = e {
            reason.push_str(&format!(
                ". If the nodes pull it over plain HTTP, their runtime is told so; tell pullgate \
                 the same: --hosts-dir with server = \"http://{host}\" in {host}/hosts.toml \
                 (containerd), or --registries-conf with insecure = true for it (CRI-O)"
            ));
        }
        Failure {
            verdict: verdict_of(e),
            reason,
            registry: e.registry_message().cloned(),
            blob: None,
            status: None,
            answered: !matches!(
                e,
                FetchError::Transport { .. }
                    | FetchError::Timeout { .. }
                    | FetchError::PlainHttp { .. }
            ),
        }
    }

    /// A refusal by HTTP status, with the registry's message.
    pub(super) fn refused(what: &str, status: StatusCode, message: RegistryMessage) -> Self {
        let verdict = classify_status(status.as_u16(), &message);
        let mut reason = format!("{what}: HTTP {status}");
        if !message.is_empty() {
            reason.push_str(&format!(": {message}"));
        }
        Failure {
            verdict,
            reason,
            registry: (!message.is_empty()).then_some(message),
            blob: None,
            status: Some(status.as_u16()),
            answered: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[test]
    fn harbor_412() {
        // Harbor's policy refusal (its body is read in `registry::message`).
        let m = RegistryMessage {
            code: Some("PROJECTPOLICYVIOLATION".into()),
            message: Some("PROJECTPOLICYVIOLATION: current image with 3 vulnerabilities".into()),
        };
        assert_eq!(classify_status(412, &m), Verdict::Blocked);
    }

    #[rstest]
    #[case(401, None, Verdict::Unauthorized)]
    #[case(403, Some("DENIED"), Verdict::Blocked)]
    #[case(403, Some("UNAUTHORIZED"), Verdict::Unauthorized)]
    #[case(412, None, Verdict::Blocked)]
    #[case(404, Some("MANIFEST_UNKNOWN"), Verdict::NotFound)]
    #[case(429, Some("TOOMANYREQUESTS"), Verdict::Unavailable)]
    #[case(503, None, Verdict::Unavailable)]
    #[case(400, Some("NAME_INVALID"), Verdict::Invalid)]
    fn statuses(#[case] status: u16, #[case] code: Option<&str>, #[case] want: Verdict) {
        let m = RegistryMessage {
            code: code.map(Into::into),
            message: None,
        };
        assert_eq!(classify_status(status, &m), want);
    }
}
