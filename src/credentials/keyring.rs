//! The kubelet's keyring: [`Keyring`] reproduces `BasicDockerKeyring` from
//! `k8s.io/kubernetes/pkg/credentialprovider/keyring.go`, with the same key normalisation, the
//! same reverse-sorted index, the same host globbing and the same Docker Hub fallback. Being
//! exact matters here: if pullgate picked a credential the kubelet would not send, it would
//! admit pods that cannot pull, or refuse pods that can.

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::docker_config::{DockerConfig, redact_userinfo};
use super::go_glob::go_match;
use super::go_url::{GoUrl, split_host_port};
use crate::registry::Credential;

/// The key the kubelet falls back to for Docker Hub images (`https://index.docker.io/v1/` once
/// normalised).
const DEFAULT_REGISTRY_HOST: &str = "index.docker.io";

/// kubelet's `BasicDockerKeyring`: credentials indexed by normalised registry key.
#[derive(Debug, Default, Clone)]
pub struct Keyring {
    // A BTreeMap orders keys bytewise like Go's sort.Strings; lookups walk it in reverse so
    // `quay.io/coreos` is tried before `quay.io`.
    slots: BTreeMap<String, Slot>,
}

#[derive(Debug, Clone)]
struct Slot {
    /// The key parsed as a glob, once; `None` when it does not re-parse, so it never matches.
    glob: Option<SchemelessUrl>,
    /// Every contributing config's credential, in the order the configs were added.
    creds: Vec<Credential>,
}

impl Keyring {
    /// kubelet's `BasicDockerKeyring.Add`.
    pub fn add(&mut self, config: &DockerConfig) {
        for (key, cred) in config.entries() {
            let normalised = match normalise_key(key) {
                Ok(normalised) => normalised,
                Err(reason) => {
                    tracing::warn!(
                        source = config.source(),
                        key = %redact_userinfo(key),
                        reason,
                        "ignoring docker config entry whose key is not a valid URL, as the kubelet does"
                    );
                    continue;
                }
            };
            self.slots
                .entry(normalised)
                .or_insert_with_key(|key| Slot {
                    glob: SchemelessUrl::parse(key).ok(),
                    creds: Vec::new(),
                })
                .creds
                .push(cred.clone());
        }
    }

    /// kubelet's `BasicDockerKeyring.Lookup`. `image` is the repository without tag or digest,
    /// e.g. `docker.io/library/nginx`. Returns the credentials to try, in order.
    pub fn lookup(&self, image: &str) -> Vec<Credential> {
        // The kubelet ignores the parse error and simply matches nothing.
        let mut found = Vec::new();
        if let Ok(target) = SchemelessUrl::parse(image) {
            for slot in self.slots.values().rev() {
                if slot
                    .glob
                    .as_ref()
                    .is_some_and(|glob| urls_match(glob, &target))
                {
                    found.extend(slot.creds.iter().cloned());
                }
            }
        }
        if found.is_empty()
            && is_default_registry_match(image)
            && let Some(slot) = self.slots.get(DEFAULT_REGISTRY_HOST)
        {
            found.extend(slot.creds.iter().cloned());
        }
        found
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// kubelet's `UnionDockerKeyring`: pass the pod-secret keyring first, then node keyrings; results
/// are concatenated in that order.
pub fn lookup_all(keyrings: &[&Keyring], image: &str) -> Vec<Credential> {
    keyrings
        .iter()
        .flat_map(|keyring| keyring.lookup(image))
        .collect()
}

/// kubelet's `URLsMatchStr`, which credential provider plugins are chosen with (`matchImages`):
/// a glob or a target that does not parse matches nothing, as the kubelet ignores the error.
pub(super) fn urls_match_str(glob: &str, target: &str) -> bool {
    match (SchemelessUrl::parse(glob), SchemelessUrl::parse(target)) {
        (Ok(glob), Ok(target)) => urls_match(&glob, &target),
        _ => false,
    }
}

/// kubelet's `ParseSchemelessURL`, as the check its config validation makes of `matchImages`.
pub(super) fn check_schemeless_url(schemeless: &str) -> Result<(), &'static str> {
    SchemelessUrl::parse(schemeless).map(|_| ())
}

/// The index key `BasicDockerKeyring.Add` derives from a config key.
pub(super) fn normalise_key(key: &str) -> Result<String, &'static str> {
    let with_scheme = if key.starts_with("https://") || key.starts_with("http://") {
        Cow::Borrowed(key)
    } else {
        Cow::Owned(format!("https://{key}"))
    };
    let parsed = GoUrl::parse(&with_scheme)?;
    // Docker treats `/v1/` and `/v2/` as the bare host (ResolveAuthConfig).
    let path = if parsed.path.starts_with("/v2/") || parsed.path.starts_with("/v1/") {
        &parsed.path[3..]
    } else {
        parsed.path.as_str()
    };
    Ok(if !path.is_empty() && path != "/" {
        format!("{}{}", parsed.host, path)
    } else {
        parsed.host
    })
}

/// kubelet's `isDefaultRegistryMatch`.
pub(super) fn is_default_registry_match(image: &str) -> bool {
    let Some((first, _)) = image.split_once('/') else {
        return !image.is_empty();
    };
    if first.is_empty() {
        return false;
    }
    if first == "docker.io" || first == "index.docker.io" {
        return true;
    }
    !first.contains(['.', ':'])
}

/// A schemeless URL as `URLsMatch` sees it (`ParseSchemelessURL` then `SplitURL`).
#[derive(Debug, Clone)]
struct SchemelessUrl {
    labels: Vec<String>,
    port: String,
    path: String,
}

impl SchemelessUrl {
    fn parse(schemeless: &str) -> Result<Self, &'static str> {
        let url = GoUrl::parse(&format!("https://{schemeless}"))?;
        let (hostname, port) = split_host_port(&url.host).unwrap_or((&url.host, ""));
        Ok(Self {
            labels: hostname.split('.').map(str::to_owned).collect(),
            port: port.to_owned(),
            path: url.path,
        })
    }
}

/// kubelet's `URLsMatch`: same port, same number of host labels each matching as a glob, and the
/// glob's path a plain string prefix of the target's (so `example.com/team` covers
/// `example.com/teamx`, as it does in the kubelet).
fn urls_match(glob: &SchemelessUrl, target: &SchemelessUrl) -> bool {
    glob.port == target.port
        && glob.labels.len() == target.labels.len()
        && target.path.starts_with(&glob.path)
        && glob
            .labels
            .iter()
            .zip(&target.labels)
            // A malformed pattern is an error in Go, which the kubelet treats as no match.
            .all(|(pattern, name)| go_match(pattern.as_bytes(), name.as_bytes()) == Ok(true))
}
