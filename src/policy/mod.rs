//! The admission policy: what each verdict does to a workload (deny, warn or allow), per
//! registry if need be, and which namespaces and images are exempt. The policy file is typed
//! and validated once, when it is loaded, so a typo stops the webhook at start-up instead of
//! admitting everything later. [`Policy::decide`] then turns the findings for one workload into
//! a [`Decision`] without any I/O; the webhook handler only wraps it into an AdmissionReview.
//!
//! # Patterns
//! Namespace, image and registry patterns are globs ([`globset`] syntax: `*`, `?`, `[…]`,
//! `{a,b}`); a pattern without metacharacters matches exactly.
//! - Image patterns are matched against the normalised reference
//!   (`docker.io/library/nginx:1.27`) *and* the image exactly as written in the pod
//!   (`nginx:1.27`); either matching exempts the image. `*` also matches `/`, so
//!   `registry.internal/base/*` covers nested repositories. Anchor patterns with the registry
//!   host and a `/` or `:`: `busybox*` would also match `busybox.evil.example/x` as written.
//!   Matching is case-sensitive, as references are.
//! - Registry patterns are matched against the registry host as the reference names it
//!   (`docker.io` for Docker Hub), case-insensitively. The port is part of the host:
//!   `*.corp.example` does not match `registry.corp.example:5000`, `*.corp.example*` does.
//!
//! The file is read in [`file`], the findings are in [`finding`], and the texts (deny message,
//! warnings, audit annotation) are written in [`render`].

mod file;
mod finding;
mod render;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use finding::{Finding, Location};

use crate::io::{ReadError, read_file};
use crate::oci::platform::{Platform, PlatformError};
use crate::oci::reference::{DOCKER_HUB, ImageRef};
use crate::probe::Verdict;
use file::{Patterns, PolicyFile, parse_platforms};
use render::{audit, deny_message, warnings};

/// The documented default policy file; parsing it gives [`Policy::default`].
pub const DEFAULT_POLICY_YAML: &str = include_str!("default-policy.yaml");

/// Largest policy file accepted; a real one is a few KiB.
pub const MAX_POLICY_BYTES: usize = 1024 * 1024;

/// Namespaces exempt when the policy does not list any: refusing a control-plane pod because
/// of a registry can take the cluster down.
const DEFAULT_EXEMPT_NAMESPACES: &[&str] = &["kube-system"];

/// An outage is not the image's fault, so by default it only warns; everything else denies.
const DEFAULT_ACTIONS: ActionTable = ActionTable {
    blocked: Some(Action::Deny),
    unauthorized: Some(Action::Deny),
    not_found: Some(Action::Deny),
    invalid: Some(Action::Deny),
    unavailable: Some(Action::Warn),
};

/// Whether a `deny` action refuses the workload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// A `deny` action refuses the workload.
    #[default]
    Enforce,
    /// Nothing is refused: every `deny` becomes a warning, for rolling pullgate out.
    Warn,
}

/// What an image with a failing verdict does to its workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Refuse the workload (a warning in [`Mode::Warn`]).
    Deny,
    /// Admit it with one warning for this image.
    Warn,
    /// Admit it silently; the image is still recorded in the audit annotations.
    Allow,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Deny => "deny",
            Action::Warn => "warn",
            Action::Allow => "allow",
        }
    }
}

/// What is decided about a workload: the `decision` of the metrics and of the audit
/// annotation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DecisionKind {
    /// Admitted, nothing to say.
    #[default]
    Allow,
    /// Admitted, with warnings.
    Warn,
    /// Refused.
    Deny,
    /// Admitted without looking: the namespace is exempt.
    Exempt,
}

impl DecisionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionKind::Allow => "allow",
            DecisionKind::Warn => "warn",
            DecisionKind::Deny => "deny",
            DecisionKind::Exempt => "exempt",
        }
    }
}

/// One action per failing verdict; `None` defers to the next table (registry, then global).
/// `pullable` is not a field, so giving it an action is an unknown-field error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionTable {
    blocked: Option<Action>,
    unauthorized: Option<Action>,
    not_found: Option<Action>,
    invalid: Option<Action>,
    unavailable: Option<Action>,
}

impl ActionTable {
    fn get(&self, verdict: Verdict) -> Option<Action> {
        match verdict {
            Verdict::Pullable => None,
            Verdict::Blocked => self.blocked,
            Verdict::Unauthorized => self.unauthorized,
            Verdict::NotFound => self.not_found,
            Verdict::Invalid => self.invalid,
            Verdict::Unavailable => self.unavailable,
        }
    }

    /// This table, with the gaps filled from `fallback`.
    fn or(self, fallback: ActionTable) -> ActionTable {
        ActionTable {
            blocked: self.blocked.or(fallback.blocked),
            unauthorized: self.unauthorized.or(fallback.unauthorized),
            not_found: self.not_found.or(fallback.not_found),
            invalid: self.invalid.or(fallback.invalid),
            unavailable: self.unavailable.or(fallback.unavailable),
        }
    }
}

/// A policy file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("policy {file} is larger than {MAX_POLICY_BYTES} bytes")]
    TooLarge { file: String },
    /// Not YAML, an unknown field, or a value of the wrong type; `detail` shows the line.
    #[error("invalid policy {file}: {detail}")]
    Yaml { file: String, detail: String },
    #[error("invalid policy {file}: {field}: {source}")]
    Glob {
        file: String,
        field: String,
        #[source]
        source: globset::Error,
    },
    #[error("invalid policy {file}: platforms[{index}]: {source}")]
    Platform {
        file: String,
        index: usize,
        #[source]
        source: PlatformError,
    },
    #[error("invalid policy {file}: platforms must list at least one platform, e.g. [linux/amd64]")]
    NoPlatforms { file: String },
}

/// A validated policy. Build it with [`Policy::load`], [`Policy::from_yaml`] or
/// [`Policy::default`]; the YAML schema is documented in `src/policy/default-policy.yaml`
/// ([`DEFAULT_POLICY_YAML`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    mode: Mode,
    platforms: Vec<Platform>,
    /// Complete: every failing verdict has an action.
    actions: ActionTable,
    exempt_namespaces: Patterns,
    exempt_images: Patterns,
    registry_hosts: Patterns,
    /// Parallel to `registry_hosts`.
    registry_actions: Vec<ActionTable>,
    /// Parallel to `registry_hosts`: whether the registry counts manifest GETs as pulls,
    /// where the entry says.
    registry_metered: Vec<Option<bool>>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy::from_file(PolicyFile::default(), "built-in defaults")
            .expect("the built-in defaults are valid (tested)")
    }
}

impl Policy {
    /// Reads and validates the policy file at `path` (at most [`MAX_POLICY_BYTES`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Policy, PolicyError> {
        let path = path.as_ref();
        let bytes = read_file(path, MAX_POLICY_BYTES as u64, "policy file")?;
        Policy::from_slice(&bytes, &path.display().to_string())
    }

    /// Parses and validates a policy; `source` names it in errors (a path, a ConfigMap key).
    pub fn from_yaml(yaml: &str, source: &str) -> Result<Policy, PolicyError> {
        Policy::from_slice(yaml.as_bytes(), source)
    }

    /// Parses and validates a policy from raw bytes (a file's content).
    pub fn from_slice(yaml: &[u8], source: &str) -> Result<Policy, PolicyError> {
        if yaml.len() > MAX_POLICY_BYTES {
            return Err(PolicyError::TooLarge {
                file: source.to_owned(),
            });
        }
        let file = crate::io::parse_yaml(yaml, source).map_err(|detail| PolicyError::Yaml {
            file: source.to_owned(),
            detail,
        })?;

        Policy::from_file(file, source)
    }

    fn from_file(file: PolicyFile, source: &str) -> Result<Policy, PolicyError> {
        let exemptions = file.exemptions.unwrap_or_default();
        let namespaces = exemptions.namespaces.unwrap_or_else(|| {
            DEFAULT_EXEMPT_NAMESPACES
                .iter()
                .map(|&n| n.to_owned())
                .collect()
        });
        let registries = file.registries.unwrap_or_default();
        let hosts: Vec<String> = registries.iter().map(|r| r.registry.clone()).collect();
        Ok(Policy {
            mode: file.mode.unwrap_or_default(),
            platforms: parse_platforms(source, file.platforms)?,
            actions: file.actions.unwrap_or_default().or(DEFAULT_ACTIONS),
            exempt_namespaces: Patterns::compile(
                source,
                "exemptions.namespaces",
                "",
                &namespaces,
                false,
            )?,
            exempt_images: Patterns::compile(
                source,
                "exemptions.images",
                "",
                &exemptions.images.unwrap_or_default(),
                false,
            )?,
            registry_hosts: Patterns::compile(source, "registries", ".registry", &hosts, true)?,
            registry_actions: registries
                .iter()
                .map(|r| r.actions.unwrap_or_default())
                .collect(),
            registry_metered: registries.iter().map(|r| r.metered).collect(),
        })
    }

    /// Whether a `deny` refuses the workload or only warns.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The node platforms every image must be pullable on (deduplicated, never empty).
    pub fn platforms(&self) -> &[Platform] {
        &self.platforms
    }

    /// Whether workloads in `namespace` are admitted without looking at their images.
    pub fn namespace_exempt(&self, namespace: &str) -> bool {
        self.exempt_namespaces.is_match(namespace)
    }

    /// Whether an image is exempt, by the image as written in the pod or by its normalised
    /// reference. The caller may skip probing it.
    pub fn image_exempt(&self, image: &str, reference: &str) -> bool {
        self.exempt_images.is_match(reference) || self.exempt_images.is_match(image)
    }

    /// The action for `verdict` on an image from `registry_host`, before [`Mode`] applies.
    /// The first registry entry matching the host decides; a verdict it does not name falls
    /// back to the global action. Pullable images are always allowed.
    pub fn action(&self, verdict: Verdict, registry_host: &str) -> Action {
        self.registry_hosts
            .first_match(registry_host)
            .and_then(|i| self.registry_actions.get(i))
            .and_then(|table| table.get(verdict))
            .or_else(|| self.actions.get(verdict))
            .unwrap_or(Action::Allow)
    }

    /// Whether `image`'s registry counts manifest GETs as pulls against a limit, so that
    /// pullgate spends as few as it can (a HEAD confirms a known digest) and keeps a reserve of
    /// them for the nodes. The first registry entry matching the host as the image names it,
    /// or else as `docker.io` for any name of Docker Hub, decides when it says `metered`;
    /// otherwise Docker Hub is metered and every other registry is not.
    pub fn metered(&self, image: &ImageRef) -> bool {
        let named = self.registry_hosts.first_match(image.registry());
        let canonical = self.registry_hosts.first_match(image.canonical_registry());
        let first = match (named, canonical) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        first
            .and_then(|i| self.registry_metered.get(i).copied().flatten())
            .unwrap_or(image.canonical_registry() == DOCKER_HUB)
    }

    /// The action taken for `verdict` on an image from `registry_host`: [`Policy::action`],
    /// with [`Mode::Warn`] turning a deny into a warning.
    pub fn effective_action(&self, verdict: Verdict, registry_host: &str) -> Action {
        match (self.mode, self.action(verdict, registry_host)) {
            (Mode::Warn, Action::Deny) => Action::Warn,
            (_, action) => action,
        }
    }

    /// Decides on one workload in `namespace` from the findings for all its images (pullable
    /// ones included, so the deny message can say "2 of 3 images").
    pub fn decide(&self, namespace: &str, findings: &[Finding]) -> Decision {
        if self.namespace_exempt(namespace) {
            return Decision {
                kind: DecisionKind::Exempt,
                message: None,
                warnings: Vec::new(),
                audit: audit(DecisionKind::Exempt, &[]),
            };
        }
        let judged: Vec<(&Finding, Action)> = findings
            .iter()
            .filter(|f| {
                f.verdict != Verdict::Pullable && !self.image_exempt(&f.image, &f.reference)
            })
            .map(|f| (f, self.effective_action(f.verdict, &f.registry_host)))
            .collect();
        let denied = with_action(&judged, Action::Deny);
        let mut warned = with_action(&judged, Action::Warn);
        // Pullable but bound to fail where it lands (exec format error): said, not refused.
        warned.extend(findings.iter().filter(|f| {
            f.verdict == Verdict::Pullable
                && f.caution
                && !self.image_exempt(&f.image, &f.reference)
        }));
        let kind = match (denied.is_empty(), warned.is_empty()) {
            (false, _) => DecisionKind::Deny,
            (true, false) => DecisionKind::Warn,
            (true, true) => DecisionKind::Allow,
        };
        Decision {
            kind,
            message: (!denied.is_empty()).then(|| deny_message(&denied, findings.len())),
            warnings: warnings(&warned),
            audit: audit(kind, &judged),
        }
    }

    /// The decision for a problem that names no image (an unreadable object, a review that
    /// overran): this policy's action for `verdict`, with `message` as its words.
    pub fn decide_problem(&self, verdict: Verdict, message: String) -> Decision {
        let action = self.effective_action(verdict, "");
        let (kind, message, warnings) = match action {
            Action::Deny => (DecisionKind::Deny, Some(message), Vec::new()),
            Action::Warn => (DecisionKind::Warn, None, vec![message]),
            Action::Allow => (DecisionKind::Allow, None, Vec::new()),
        };
        Decision {
            kind,
            message,
            warnings,
            audit: BTreeMap::from([("decision".to_owned(), action.as_str().to_owned())]),
        }
    }
}

/// The answer for one workload, ready to go into an AdmissionResponse.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    pub kind: DecisionKind,
    /// Why it is refused; set only when it is.
    pub message: Option<String>,
    /// One line per image that only warns (each at most 256 characters).
    pub warnings: Vec<String>,
    /// Audit annotations, without a prefix (the apiserver adds the webhook's name):
    /// `decision` (allow, warn, deny or exempt) and, when an image failed, `images`, a JSON
    /// array of `{image, container, verdict, action}` (and `images_omitted` past 20).
    pub audit: BTreeMap<String, String>,
}

impl Decision {
    /// Whether the workload is admitted.
    pub fn allowed(&self) -> bool {
        self.kind != DecisionKind::Deny
    }

    /// Adds a warning that is not about an image (a pull secret that could not be read); an
    /// admission with nothing else to say becomes one with a warning. The audit annotation
    /// keeps the policy's decision about the images.
    pub fn add_warning(&mut self, warning: String) {
        if self.kind == DecisionKind::Allow {
            self.kind = DecisionKind::Warn;
        }
        self.warnings.push(warning);
    }
}

fn with_action<'a>(judged: &[(&'a Finding, Action)], action: Action) -> Vec<&'a Finding> {
    judged
        .iter()
        .filter(|(_, a)| *a == action)
        .map(|(f, _)| *f)
        .collect()
}
