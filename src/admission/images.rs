//! The images of a review: each parsed and matched against the node's keyring once and then
//! remembered, its credentials in the kubelet's order, and its probe run through the verdict
//! cache (merged with identical ones, cut off at the review's deadline).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::workload::{ImageUse, Workload};
use super::{MAX_PROBES_IN_FLIGHT, Reviewer};
use crate::credentials::{PodAccount, PodCredentials, Provided, PullSecretRefs};
use crate::oci::digest::Digest;
use crate::oci::platform::Platform;
use crate::oci::reference::{ImageRef, ReferenceError};
use crate::policy::{Finding, Policy};
use crate::probe::{self, ProbeOptions, Report, Verdict};
use crate::probe::{Answer, ProbeKey};
use crate::registry::Credential;

impl Reviewer {
    /// The pod's pull secrets, read before the deadline; what could not be read in time is
    /// treated like an unreadable secret.
    pub(super) async fn credentials(
        &self,
        workload: &Workload,
        deadline: Instant,
    ) -> PodCredentials {
        let account = Some(PodAccount {
            namespace: workload.namespace.clone(),
            service_account: workload.pod.service_account.clone(),
        });
        let Some(secrets) = &self.secrets else {
            return PodCredentials {
                account,
                ..PodCredentials::default()
            };
        };
        let refs = PullSecretRefs {
            names: workload.pod.image_pull_secrets.clone(),
            service_account: workload.pod.service_account.clone(),
            is_template: workload.pod.is_template,
        };
        let lookup = secrets.for_pod(&workload.namespace, &refs);
        match tokio::time::timeout_at(deadline.into(), lookup).await {
            Ok(credentials) => PodCredentials {
                account,
                ..credentials
            },
            Err(_) => PodCredentials {
                warnings: vec![
                    "pull secrets could not be read before the review's deadline".to_owned(),
                ],
                incomplete: true,
                account,
                ..PodCredentials::default()
            },
        }
    }

    /// What `written` names, parsed and matched against the node's keyring once and then
    /// remembered: on the hot path the same few images come back thousands of times a second,
    /// and the keyring lookup (a URL parse and glob match per entry) and the normalised
    /// strings would otherwise be rebuilt for every review.
    fn resolve(&self, written: &str) -> Result<Arc<Resolved>, ReferenceError> {
        if let Some(resolved) = self.resolved.get(written) {
            return Ok(resolved);
        }
        let image = ImageRef::parse(written)?;
        let resolved = Arc::new(Resolved {
            reference: image.to_string(),
            node: self.node.lookup(&image.name()),
            image,
        });
        self.resolved.insert(written.to_owned(), resolved.clone());
        Ok(resolved)
    }

    pub(super) async fn check_image(
        &self,
        written: &str,
        credentials: &PodCredentials,
        platforms: &Arc<[Platform]>,
        policy: &Policy,
        deadline: Instant,
        budget: Duration,
    ) -> Checked {
        let resolved = match self.resolve(written) {
            Ok(resolved) => resolved,
            Err(e) => {
                return Checked::of(
                    &probe::invalid_reference(written, &e),
                    String::new(),
                    policy.image_exempt(written, written),
                );
            }
        };
        let registry = resolved.image.registry().to_owned();
        if policy.image_exempt(written, &resolved.reference) {
            return Checked::of(&probe::exempt(&resolved.reference), registry, true);
        }
        // The kubelet's order: the pod's secrets first, then the node's credentials (its docker
        // configs', then its credential-provider plugins').
        let pod = if credentials.keyring.is_empty() {
            Vec::new()
        } else {
            credentials.keyring.lookup(resolved.name())
        };
        let plugins = if self.providers.is_empty() {
            Provided::default()
        } else {
            self.providers
                .credentials(resolved.name(), credentials.account.as_ref(), deadline)
                .await
        };
        let key = ProbeKey {
            reference: resolved.reference.clone(),
            platforms: platforms.to_vec(),
            credentials: pod
                .iter()
                .chain(&resolved.node)
                .chain(&plugins.credentials)
                .map(|c| c.id())
                .collect(),
        };
        // Built only on a miss: the probe's future is large, and a cache hit must not pay for
        // creating and moving it.
        let probe = || {
            let (client, metrics) = (self.registry.clone(), self.metrics.clone());
            let options = ProbeOptions {
                platforms: platforms.to_vec(),
                rules: self.rules,
                hosts: self.hosts.clone(),
                timeout: self.probe_timeout,
                blobs: self.blobs.clone(),
                metered: policy.metered(&resolved.image),
                store: self.store.clone(),
                budgets: self.budgets.clone(),
            };
            let resolved = resolved.clone();
            let plugin_credentials = plugins.credentials.clone();
            let permit = self.probes.clone().try_acquire_owned();
            async move {
                let Ok(_permit) = permit else {
                    return probe::overloaded(&resolved.reference, MAX_PROBES_IN_FLIGHT);
                };
                let _running = metrics.probe_started();
                let found: Vec<_> = pod
                    .into_iter()
                    .chain(resolved.node.iter().cloned())
                    .chain(plugin_credentials)
                    .collect();
                let report = probe::probe(&client, &resolved.image, &found, &options).await;
                metrics.probe(report.verdict.as_str());
                if report.pulls > 0 {
                    metrics.pulls(resolved.image.canonical_registry(), report.pulls);
                }
                report
            }
        };
        let lookup = self.cache.get_or_probe(key, probe);
        let mut checked = match tokio::time::timeout_at(deadline.into(), lookup).await {
            Ok(cached) => {
                self.metrics.cache_lookup(cached.hit);
                Checked {
                    answer: cached.answer,
                    reference: resolved.reference.clone(),
                    registry,
                    exempt: false,
                    warnings: Vec::new(),
                }
            }
            Err(_) => Checked::of(
                &probe::unfinished(&resolved.reference, budget),
                registry,
                false,
            ),
        };
        // A 401 when a pull secret could not be read, or a credential provider failed, says
        // nothing about the node, which may well have that credential.
        for failure in &plugins.failures {
            checked.warnings.push(format!(
                "credential provider {} failed for {}: {}; the image was checked without its credential",
                failure.provider, resolved.reference, failure.reason
            ));
        }
        let why = if credentials.incomplete {
            Some("a pull secret could not be read".to_owned())
        } else {
            plugins
                .failures
                .first()
                .map(|f| format!("credential provider {} failed", f.provider))
        };
        let answer = &checked.answer;
        if let Some(why) = why
            && answer.verdict() == Verdict::Unauthorized
        {
            checked.answer = Answer::new(
                Verdict::Unavailable,
                &format!("{} (not conclusive: {why})", answer.reason()),
                answer.failed_blob(),
                answer.registry_message(),
            );
        }
        checked
    }
}

/// An image reference as written, parsed, with what does not depend on the pod.
pub(super) struct Resolved {
    image: ImageRef,
    /// The normalised reference, e.g. `docker.io/library/nginx:1.27`.
    reference: String,
    /// The node's credentials for it, in the kubelet's order.
    node: Vec<Credential>,
}

impl Resolved {
    /// The repository without tag or digest, as the kubelet's keyring matches it: the
    /// normalised reference up to its tag or digest.
    fn name(&self) -> &str {
        &self.reference[..self.image.registry().len() + 1 + self.image.repository().len()]
    }
}

/// One distinct image's result.
pub(super) struct Checked {
    answer: Answer,
    /// The normalised reference (empty when the image is not a reference).
    reference: String,
    /// The registry as the reference names it, for per-registry policy.
    registry: String,
    exempt: bool,
    /// What the review should say besides the finding (a credential provider that failed).
    pub(super) warnings: Vec<String>,
}

impl Checked {
    /// The result of a report made without the cache.
    fn of(report: &Report, registry: String, exempt: bool) -> Self {
        Checked {
            answer: Answer::of(report),
            reference: report.reference.clone(),
            registry,
            exempt,
            warnings: Vec::new(),
        }
    }
}

pub(super) fn finding(use_: &ImageUse, checked: &Checked) -> Finding {
    let answer = &checked.answer;
    Finding {
        image: use_.image.clone(),
        reference: if checked.reference.is_empty() {
            use_.image.clone()
        } else {
            checked.reference.clone()
        },
        registry_host: checked.registry.clone(),
        container: use_.container.clone(),
        location: use_.location,
        // An exempt image is reported pullable so the policy never judges it.
        verdict: if checked.exempt {
            Verdict::Pullable
        } else {
            answer.verdict()
        },
        reason: answer.reason().to_owned(),
        failed_blob: answer.failed_blob().and_then(|d| Digest::parse(d).ok()),
        registry_message: answer.registry_message().map(str::to_owned),
        caution: answer.is_caution() && !checked.exempt,
        host: answer.host().map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keyring_name_is_the_reference_without_tag_or_digest() {
        let digest = format!("sha256:{}", "a".repeat(64));
        for written in [
            "nginx".to_owned(),
            "nginx:1.27".to_owned(),
            "library/nginx@".to_owned() + &digest,
            "r.example:5000/team/app:1@".to_owned() + &digest,
            "[::1]:5000/app".to_owned(),
            "localhost/a/b/c:v".to_owned(),
        ] {
            let image = ImageRef::parse(&written).unwrap();
            let resolved = Resolved {
                reference: image.to_string(),
                node: Vec::new(),
                image: image.clone(),
            };
            assert_eq!(resolved.name(), image.name(), "{written}");
        }
    }
}
