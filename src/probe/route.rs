//! The hosts a node's runtime pulls an image from, as the nodes' `hosts.toml` or
//! `registries.conf` lists them (mirrors, then the registry; just the registry when nothing
//! is configured), one session and one ledger each, and how a request moves on to the next
//! host when one fails: containerd walks the hosts for every request (a layer a mirror refuses
//! may come from the registry), containers/image takes the first host that serves the
//! manifest for everything (see `registry::hosts` for where each rule was read).

use std::future::Future;
use std::sync::Mutex;

use serde::Serialize;
use url::Url;

use super::ledger::Ledger;
use super::verdict::{Failure, Verdict};
use crate::oci::reference::ImageRef;
use crate::registry::hosts::{Capabilities, Endpoint, Fallback, Route, Scheme, fetch_hosts};
use crate::registry::{Credential, CredentialId, HostTls, RegistryClient, Session, SessionTarget};

use super::ProbeOptions;

/// What the image's own manifest is called in answers (and in every message about it).
pub(super) const MANIFEST: &str = "manifest";

/// Answers noted per host at most: a host that refuses every layer of a 100-layer image
/// must not make the report grow with them.
const MAX_ANSWERS_PER_HOST: usize = 8;

/// One host of the route, ready to be asked.
pub(super) struct Host<'a> {
    pub(super) session: Session<'a>,
    pub(super) ledger: Ledger<'a>,
    /// `https://mirror.example:5000/v2`, for reports.
    pub(super) name: String,
    pub(super) mirror: bool,
    capabilities: Capabilities,
    /// The plain-HTTP twin of the host before it (an https host the runtime falls back to
    /// plain HTTP for): asked only when that host gave no HTTP answer at all.
    http_twin: bool,
}

/// What one host answered, for `check --json` and the audit.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct HostReport {
    pub host: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub mirror: bool,
    /// "manifest: served", "layer sha256:1a2b3c4d5e6f: HTTP 403 Forbidden: …", in order.
    pub answers: Vec<String>,
}

/// The route's hosts, and what each answered.
pub(super) struct Hosts<'a> {
    pub(super) list: Vec<Host<'a>>,
    pub(super) fallback: Fallback,
    /// Whether the route came from the nodes' configuration (reports then name the hosts).
    pub(super) configured: bool,
    answers: Mutex<Vec<Answers>>,
}

/// What one host answered: its refusals and the manifest, word for word; what else it
/// served, counted.
#[derive(Clone, Default)]
struct Answers {
    noted: Vec<String>,
    served: usize,
}

/// Which failure speaks for a request that every host refused.
#[derive(Clone, Copy)]
pub(super) enum Pick {
    /// containerd's resolve: the one that got furthest (a refusal over a missing tag over an
    /// unreachable host), the first of its rank.
    Furthest,
    /// containerd's fetch: the first.
    First,
    /// containers/image: the registry's own (the last source), the mirrors' beside it.
    Last,
}

/// The route for `image` made into hosts for one credential, or why it cannot be (a host's
/// TLS files cannot be read).
pub(super) fn hosts<'a>(
    client: &'a RegistryClient,
    route: &Route,
    configured: bool,
    image: &'a ImageRef,
    credential: Option<&'a Credential>,
    options: &'a ProbeOptions,
    deadline: std::time::Instant,
) -> Result<Hosts<'a>, Failure> {
    let mut list = Vec::with_capacity(route.endpoints.len() + 1);
    for endpoint in &route.endpoints {
        let schemes: &[(&str, bool)] = match endpoint.scheme {
            Scheme::Https => &[("https", false)],
            Scheme::Http => &[("http", false)],
            Scheme::HttpsThenHttp => &[("https", false), ("http", true)],
        };
        for &(scheme, http_twin) in schemes {
            let target = target(endpoint, scheme)?;
            let name = format!(
                "{}{}",
                target.base.as_str().trim_end_matches('/'),
                endpoint.path_prefix
            );
            let session = client
                .session_at(target, credential, deadline)
                .map_err(|e| {
                    Failure::new(
                        Verdict::Invalid,
                        format!("the nodes' settings for {}: {e}", endpoint.host),
                    )
                })?;
            let ledger = Ledger::new(
                &options.store,
                &options.budgets,
                // A mirror does not count the registry's pulls.
                options.metered && !endpoint.mirror,
                image,
                credential.map_or(CredentialId::ANONYMOUS, Credential::id),
            );
            list.push(Host {
                session,
                ledger,
                name,
                mirror: endpoint.mirror,
                capabilities: endpoint.capabilities(),
                http_twin,
            });
        }
    }
    let answers = Mutex::new(vec![Answers::default(); list.len()]);
    Ok(Hosts {
        list,
        fallback: route.fallback,
        configured,
        answers,
    })
}

fn target(endpoint: &Endpoint, scheme: &str) -> Result<SessionTarget, Failure> {
    let base = Url::parse(&format!("{scheme}://{}/", endpoint.host)).map_err(|e| {
        Failure::new(
            Verdict::Invalid,
            format!("the nodes' settings name host {:?}: {e}", endpoint.host),
        )
    })?;
    let prefix = match endpoint.path_prefix.trim_matches('/') {
        "" => String::new(),
        path => format!("{path}/"),
    };
    let query = endpoint.namespace_query.as_ref().map(|ns| {
        url::form_urlencoded::Serializer::new(String::new())
            .append_pair("ns", ns)
            .finish()
    });
    Ok(SessionTarget {
        base,
        prefix,
        query,
        headers: endpoint.headers.iter().cloned().collect(),
        tls: HostTls {
            ca_files: endpoint.ca_files.clone(),
            client_certs: endpoint.client_certs.clone(),
            skip_verify: endpoint.skip_verify,
        },
        repository: endpoint.repository.clone(),
    })
}

impl<'a> Hosts<'a> {
    /// The hosts that may serve the image's own manifest: for a tag, those that may resolve
    /// one; for a digest, those that may pull.
    pub(super) fn for_manifest(&self, image: &ImageRef) -> Vec<&Host<'a>> {
        let digest = image.digest().is_some();
        self.list
            .iter()
            .filter(|h| h.capabilities.serves_manifest(digest))
            .collect()
    }

    /// The hosts containerd fetches content by digest from (see [`fetch_hosts`]).
    pub(super) fn for_content(&self) -> Vec<&Host<'a>> {
        fetch_hosts(&self.list, |h| h.capabilities)
    }

    /// Asks `hosts` in order until one serves: `ask`'s answer and the host, or the failure
    /// that `pick` says speaks for them all. Every answer is noted against its host.
    pub(super) async fn first_served<'h, T, F, Fut>(
        &self,
        hosts: &[&'h Host<'a>],
        what: &str,
        pick: Pick,
        ask: F,
    ) -> Result<(T, &'h Host<'a>), Failure>
    where
        F: Fn(&'h Host<'a>) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut failures: Vec<Failure> = Vec::new();
        let mut previous_answered = false;
        for &host in hosts {
            // The plain-HTTP twin is only for a host that gave no HTTP answer over TLS.
            if host.http_twin && previous_answered {
                continue;
            }
            match ask(host).await {
                Ok(value) => {
                    self.note(host, what, None);
                    return Ok((value, host));
                }
                Err(failure) => {
                    self.note(host, what, Some(&failure));
                    previous_answered = failure.answered;
                    failures.push(failure);
                }
            }
        }
        let Some(first) = failures.first() else {
            return Err(Failure::new(
                Verdict::NotFound,
                format!("{what}: the nodes' configuration leaves no host that may serve it"),
            ));
        };
        let chosen = match pick {
            Pick::First => first.clone(),
            Pick::Last => failures.last().cloned().unwrap_or_else(|| first.clone()),
            Pick::Furthest => failures
                .iter()
                .fold(first, |best, f| if rank(f) > rank(best) { f } else { best })
                .clone(),
        };
        if failures.len() == 1 || !self.configured {
            return Err(chosen);
        }
        Err(Failure {
            reason: format!(
                "{} ({} hosts of the nodes' configuration tried, none served it)",
                chosen.reason,
                failures.len()
            ),
            ..chosen
        })
    }

    /// Notes `host`'s answer to the ask for `what`: a failure, or that it served it.
    fn note(&self, host: &Host<'_>, what: &str, failure: Option<&Failure>) {
        let Some(i) = self.list.iter().position(|h| std::ptr::eq(h, host)) else {
            return;
        };
        let mut answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        let answers = &mut answers[i];
        let answer = match failure {
            Some(f) => f.reason.clone(),
            None if what == MANIFEST => format!("{what}: served"),
            None => {
                answers.served += 1;
                return;
            }
        };
        if answers.noted.len() < MAX_ANSWERS_PER_HOST && !answers.noted.contains(&answer) {
            answers.noted.push(answer);
        }
    }

    /// What each host that was asked answered, in the route's order.
    pub(super) fn reports(&self) -> Vec<HostReport> {
        let answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        self.list
            .iter()
            .zip(answers.iter())
            .filter(|(_, a)| !a.noted.is_empty() || a.served > 0)
            .map(|(h, a)| {
                let mut answers = a.noted.clone();
                if a.served > 0 {
                    answers.push(format!("{} more object(s) served", a.served));
                }
                HostReport {
                    host: h.name.clone(),
                    mirror: h.mirror,
                    answers,
                }
            })
            .collect()
    }
}

/// containerd's `firstErrPriority`, read off verdicts: an unreachable host says least, a
/// missing manifest more, a refusal more still, an unusable answer most.
fn rank(f: &Failure) -> u8 {
    match f.verdict {
        Verdict::Unavailable if !f.answered => 1,
        Verdict::NotFound => 2,
        Verdict::Invalid => 4,
        _ => 3,
    }
}
