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
//! Kubernetes truncates warnings longer than 256 characters and caps their total, and deny
//! messages end up in events and terminals, so every text produced here is bounded.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

use crate::{
    platform::{Platform, PlatformError},
    verdict::Verdict,
};

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

const PREFIX: &str = "pullgate: ";
/// The apiserver may truncate longer warnings.
const MAX_WARNING_CHARS: usize = 256;
/// The apiserver caps all warnings at 4096 characters; past this many, the rest are counted.
const MAX_WARNINGS: usize = 12;
/// Images listed in a deny message; the rest are counted.
const MAX_LISTED: usize = 20;
/// Longest line about one image in a deny message.
const MAX_LINE_CHARS: usize = 512;
/// An image or container name longer than this is shown cut, in deny lines and warnings.
const MAX_NAME_CHARS: usize = 160;
/// Entries in the `images` audit annotation, and the longest text in one.
const MAX_AUDIT_IMAGES: usize = 20;
const MAX_AUDIT_CHARS: usize = 256;

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
    #[error("cannot read policy file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
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

/// The policy file as written. Sections are `Option`s so that a section whose entries are all
/// commented out (YAML null) means "defaults", like an absent one.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    mode: Option<Mode>,
    platforms: Option<Vec<String>>,
    actions: Option<ActionTable>,
    exemptions: Option<ExemptionsFile>,
    registries: Option<Vec<RegistryFile>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExemptionsFile {
    namespaces: Option<Vec<String>>,
    images: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    registry: String,
    actions: Option<ActionTable>,
}

/// Compiled globs, compared by their source so that policies can be compared.
#[derive(Clone, Debug)]
struct Patterns {
    globs: Vec<Glob>,
    set: GlobSet,
}

impl PartialEq for Patterns {
    fn eq(&self, other: &Self) -> bool {
        self.globs == other.globs
    }
}

impl Eq for Patterns {}

impl Patterns {
    /// Compiles the list `field`; errors name an entry as `{field}[i]{suffix}`.
    fn compile(
        file: &str,
        field: &str,
        suffix: &str,
        patterns: &[String],
        case_insensitive: bool,
    ) -> Result<Self, PolicyError> {
        let error = |field: String| {
            let file = file.to_owned();
            move |source| PolicyError::Glob {
                file,
                field,
                source,
            }
        };
        let mut builder = GlobSetBuilder::new();
        let mut globs = Vec::with_capacity(patterns.len());
        for (i, pattern) in patterns.iter().enumerate() {
            let glob = GlobBuilder::new(pattern)
                // `*` crosses `/`, so one pattern covers a registry's nested repositories.
                .literal_separator(false)
                .case_insensitive(case_insensitive)
                .build()
                .map_err(error(format!("{field}[{i}]{suffix}")))?;
            builder.add(glob.clone());
            globs.push(glob);
        }
        let set = builder.build().map_err(error(field.to_owned()))?;
        Ok(Patterns { globs, set })
    }

    fn is_match(&self, text: &str) -> bool {
        self.set.is_match(text)
    }

    /// The index of the first pattern, in file order, that matches.
    fn first_match(&self, text: &str) -> Option<usize> {
        self.set.matches(text).into_iter().min()
    }
}

/// A validated policy. Build it with [`Policy::load`], [`Policy::from_yaml`] or
/// [`Policy::default`]; the YAML schema is documented in `src/default-policy.yaml`
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
        let shown = path.display().to_string();
        let bytes = std::fs::File::open(path)
            .and_then(|f| crate::reload::read_limited(f, MAX_POLICY_BYTES as u64))
            .map_err(|source| PolicyError::Read {
                path: shown.clone(),
                source,
            })?
            .ok_or_else(|| PolicyError::TooLarge {
                file: shown.clone(),
            })?;
        Policy::from_slice(&bytes, &shown)
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
        let options = serde_saphyr::options! {
            // Our schema nests four deep and needs no aliases; the file size is bounded above.
            budget: serde_saphyr::budget! {
                max_depth: 16,
                max_anchors: 64,
                max_aliases: 64,
            },
            reject_unsupported_tags: true,
        };
        let file = serde_saphyr::from_slice_with_options(yaml, options).map_err(|e| {
            let rendered =
                e.render_with_options(serde_saphyr::render_options! { source_name: Some(source) });
            PolicyError::Yaml {
                file: source.to_owned(),
                detail: rendered
                    .strip_prefix("error: ")
                    .unwrap_or(&rendered)
                    .to_owned(),
            }
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
                allowed: true,
                message: None,
                warnings: Vec::new(),
                audit: BTreeMap::from([("decision".to_owned(), "exempt".to_owned())]),
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
        let warned = with_action(&judged, Action::Warn);
        let outcome = match (denied.is_empty(), warned.is_empty()) {
            (false, _) => "deny",
            (true, false) => "warn",
            (true, true) => "allow",
        };
        Decision {
            allowed: denied.is_empty(),
            message: (!denied.is_empty()).then(|| deny_message(&denied, findings.len())),
            warnings: warnings(&warned),
            audit: audit(outcome, &judged),
        }
    }
}

/// The platforms as given, or linux/amd64 when none are.
fn parse_platforms(file: &str, given: Option<Vec<String>>) -> Result<Vec<Platform>, PolicyError> {
    let Some(given) = given else {
        return Ok(vec![Platform::linux_amd64()]);
    };
    if given.is_empty() {
        return Err(PolicyError::NoPlatforms {
            file: file.to_owned(),
        });
    }
    let mut platforms: Vec<Platform> = Vec::with_capacity(given.len());
    for (index, text) in given.iter().enumerate() {
        let platform = Platform::parse(text).map_err(|source| PolicyError::Platform {
            file: file.to_owned(),
            index,
            source,
        })?;
        // `linux/arm64` and `linux/aarch64` are one platform; probing it twice is waste.
        if !platforms.contains(&platform) {
            platforms.push(platform);
        }
    }
    Ok(platforms)
}

/// What the probe found about one image of the workload under review (serialised as
/// `pullgate review --json` prints it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The image as written in the pod spec.
    pub image: String,
    /// The normalised reference that was probed (`docker.io/library/nginx:1.27`).
    pub reference: String,
    /// The registry as the reference names it (`ImageRef::registry`, `docker.io` for Hub).
    /// Only for matching registry overrides; the reference already says it.
    #[serde(skip)]
    pub registry_host: String,
    /// The container's name.
    pub container: String,
    /// Which list the container is in: "container", "init container", "ephemeral container".
    pub location: String,
    pub verdict: Verdict,
    /// The probe's one-sentence reason.
    pub reason: String,
    /// The digest of the blob whose refusal decided the verdict.
    pub failed_blob: Option<String>,
    /// The registry's own code and message (`DENIED: current image with 3 vulnerabilities…`).
    pub registry_message: Option<String>,
}

/// The answer for one workload, ready to go into an AdmissionResponse.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Whether the workload is admitted.
    pub allowed: bool,
    /// Why it is refused; set only when it is.
    pub message: Option<String>,
    /// One line per image that only warns (each at most 256 characters).
    pub warnings: Vec<String>,
    /// Audit annotations, without a prefix (the apiserver adds the webhook's name):
    /// `decision` (allow, warn, deny or exempt) and, when an image failed, `images`, a JSON
    /// array of `{image, container, verdict, action}` (and `images_omitted` past 20).
    pub audit: BTreeMap<String, String>,
}

fn with_action<'a>(judged: &[(&'a Finding, Action)], action: Action) -> Vec<&'a Finding> {
    judged
        .iter()
        .filter(|(_, a)| *a == action)
        .map(|(f, _)| *f)
        .collect()
}

fn deny_message(denied: &[&Finding], total: usize) -> String {
    let mut message = format!(
        "{PREFIX}{} of {} cannot be pulled:",
        denied.len(),
        count(total, "image")
    );
    for finding in denied.iter().take(MAX_LISTED) {
        message.push_str("\n- ");
        message.push_str(&shorten(describe(finding), MAX_LINE_CHARS));
    }
    if denied.len() > MAX_LISTED {
        let _ = write!(message, "\n- and {} more", denied.len() - MAX_LISTED);
    }
    message
}

fn warnings(warned: &[&Finding]) -> Vec<String> {
    let mut lines: Vec<String> = warned
        .iter()
        .take(MAX_WARNINGS)
        .map(|f| shorten(format!("{PREFIX}{}", describe(f)), MAX_WARNING_CHARS))
        .collect();
    if warned.len() > MAX_WARNINGS {
        let more = count(warned.len() - MAX_WARNINGS, "more image");
        lines.push(format!("{PREFIX}{more} with problems not listed"));
    }
    lines
}

/// One line a user can act on: where the image is used, what is wrong with it, and the
/// registry's own words last, so that shortening the line shortens those first.
fn describe(finding: &Finding) -> String {
    // A hostile image string (up to the request size) must not push the verdict and the
    // reason off the line.
    let mut line = format!(
        "{} {:?}: image {:?} {}",
        clean(&finding.location),
        shorten(finding.container.clone(), MAX_NAME_CHARS),
        shorten(finding.image.clone(), MAX_NAME_CHARS),
        phrase(finding.verdict)
    );
    let detail = detail(finding);
    if !detail.is_empty() {
        line.push_str(": ");
        line.push_str(&detail);
    }
    line
}

fn phrase(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Pullable => "is pullable",
        Verdict::Blocked => "is blocked by the registry",
        Verdict::Unauthorized => "is unauthorized (check imagePullSecrets)",
        Verdict::NotFound => "was not found",
        Verdict::Invalid => "is invalid",
        Verdict::Unavailable => "could not be checked (registry unavailable)",
    }
}

/// The reason, with the failing blob and the registry's message added when it lacks them
/// (the probe's reasons usually carry both).
fn detail(finding: &Finding) -> String {
    let reason = clean(finding.reason.trim());
    let mut parts = Vec::new();
    if let Some(blob) = finding.failed_blob.as_deref().map(short_digest)
        && !reason.contains(&blob)
    {
        parts.push(format!("blob {blob}"));
    }
    let registry = finding.registry_message.as_deref().map(clean);
    let registry = registry.filter(|m| !m.is_empty() && !reason.contains(m.as_str()));
    if !reason.is_empty() {
        parts.push(reason);
    }
    parts.extend(registry);
    parts.join(": ")
}

#[derive(Serialize)]
struct AuditImage {
    image: String,
    container: String,
    verdict: Verdict,
    action: Action,
}

fn audit(outcome: &str, judged: &[(&Finding, Action)]) -> BTreeMap<String, String> {
    let mut audit = BTreeMap::from([("decision".to_owned(), outcome.to_owned())]);
    if judged.is_empty() {
        return audit;
    }
    let images: Vec<AuditImage> = judged
        .iter()
        .take(MAX_AUDIT_IMAGES)
        .map(|(f, action)| AuditImage {
            image: shorten(f.reference.clone(), MAX_AUDIT_CHARS),
            container: shorten(f.container.clone(), MAX_AUDIT_CHARS),
            verdict: f.verdict,
            action: *action,
        })
        .collect();
    // Serialising strings and unit enums cannot fail; an empty annotation would be harmless.
    audit.insert(
        "images".to_owned(),
        serde_json::to_string(&images).unwrap_or_default(),
    );
    if judged.len() > MAX_AUDIT_IMAGES {
        let omitted = judged.len() - MAX_AUDIT_IMAGES;
        audit.insert("images_omitted".to_owned(), omitted.to_string());
    }
    audit
}

/// `sha256:0123456789ab`, the form the probe's reasons use.
fn short_digest(digest: &str) -> String {
    match digest.split_once(':') {
        Some((algorithm, hex)) => {
            format!("{algorithm}:{}", hex.chars().take(12).collect::<String>())
        }
        None => digest.chars().take(19).collect(),
    }
}

fn count(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

/// Registry text on one line: a warning with a control character is dropped by the apiserver.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `text` cut to at most `max` characters, ending in an ellipsis when cut.
fn shorten(text: String, max: usize) -> String {
    if text.chars().count() <= max {
        return text;
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::ImageRef;
    use rstest::rstest;

    const DENIED: &str = "DENIED: current image with 3 vulnerabilities cannot be pulled";
    const BLOB: &str = "sha256:1a2b3c4d5e6f00000000000000000000000000000000000000000000000000ff";

    fn policy(yaml: &str) -> Policy {
        Policy::from_yaml(yaml, "test.yaml").unwrap()
    }

    fn finding(image: &str, verdict: Verdict) -> Finding {
        let parsed = ImageRef::parse(image).unwrap();
        Finding {
            image: image.to_owned(),
            reference: parsed.to_string(),
            registry_host: parsed.registry().to_owned(),
            container: "app".to_owned(),
            location: "container".to_owned(),
            verdict,
            reason: format!("manifest: {verdict}"),
            failed_blob: None,
            registry_message: None,
        }
    }

    #[test]
    fn a_huge_image_string_leaves_room_for_the_verdict_and_the_reason() {
        let mut f = finding("r.example/app:1", Verdict::NotFound);
        f.image = format!("r.example/{}:1", "a".repeat(10_000));
        f.reason = "manifest unknown: the tag does not exist".into();
        let message = Policy::default().decide("default", &[f]).message.unwrap();
        assert!(message.contains("was not found"), "{message}");
        assert!(message.contains("the tag does not exist"), "{message}");
        assert!(message.chars().count() < MAX_LINE_CHARS + 100, "{message}");
    }

    fn blocked_layer(image: &str) -> Finding {
        Finding {
            reason: "layer sha256:1a2b3c4d5e6f: HTTP 403 Forbidden".to_owned(),
            failed_blob: Some(BLOB.to_owned()),
            registry_message: Some(DENIED.to_owned()),
            ..finding(image, Verdict::Blocked)
        }
    }

    /// Whether one finding for `image` with `verdict` is admitted in namespace `default`.
    fn admitted(p: &Policy, image: &str, verdict: Verdict) -> bool {
        p.decide("default", &[finding(image, verdict)]).allowed
    }

    #[test]
    fn defaults() {
        let p = Policy::default();
        assert_eq!(p.mode(), Mode::Enforce);
        assert_eq!(p.platforms(), [Platform::linux_amd64()]);
        assert!(p.namespace_exempt("kube-system") && !p.namespace_exempt("default"));
        assert!(!p.image_exempt("nginx", "docker.io/library/nginx:latest"));
    }

    #[test]
    fn embedded_file_is_the_default() {
        let embedded = Policy::from_yaml(DEFAULT_POLICY_YAML, "default-policy.yaml").unwrap();
        assert_eq!(embedded, Policy::default());
        assert_eq!(policy(""), Policy::default());
        // Sections whose entries are all commented out read as null.
        assert_eq!(
            policy("actions:\nexemptions:\nregistries:\n"),
            Policy::default()
        );
        assert_ne!(policy("exemptions: { namespaces: [] }"), Policy::default());
    }

    #[test]
    fn every_field() {
        let p = policy(
            r#"
mode: warn
platforms: [linux/amd64, linux/arm64, linux/aarch64]
actions: { blocked: warn, unauthorized: allow, not_found: warn, invalid: allow, unavailable: deny }
exemptions:
  namespaces: [team-*]
  images: ["registry.internal/base/*"]
registries:
  - registry: registry.corp.example:5000
    actions: { blocked: allow }
"#,
        );
        assert_eq!(p.mode(), Mode::Warn);
        let arm64 = Platform::parse("linux/arm64").unwrap();
        assert_eq!(p.platforms(), [Platform::linux_amd64(), arm64]);
        let expected = [
            (Verdict::Blocked, Action::Warn),
            (Verdict::Unauthorized, Action::Allow),
            (Verdict::NotFound, Action::Warn),
            (Verdict::Invalid, Action::Allow),
            (Verdict::Unavailable, Action::Deny),
        ];
        for (verdict, action) in expected {
            assert_eq!(p.action(verdict, "quay.io"), action, "{verdict}");
        }
        assert!(p.namespace_exempt("team-a") && !p.namespace_exempt("kube-system"));
        assert!(p.image_exempt("x", "registry.internal/base/app:1"));
        let corp = "registry.corp.example:5000";
        assert_eq!(p.action(Verdict::Blocked, corp), Action::Allow);
        assert_eq!(p.action(Verdict::Unavailable, corp), Action::Deny);
    }

    #[rstest]
    #[case::unknown_top_level("mod: warn", "unknown field `mod`")]
    #[case::unknown_action("actions: { blockd: warn }", "unknown field `blockd`")]
    #[case::unknown_exemption("exemptions: { namespace: [a] }", "unknown field `namespace`")]
    #[case::unknown_registry_field("registries: [{ registry: a, action: {} }]", "`action`")]
    #[case::pullable(
        "actions: { pullable: deny }",
        "unknown field `pullable`, expected one of blocked"
    )]
    #[case::pullable_registry(
        "registries: [{ registry: a, actions: { pullable: allow } }]",
        "`pullable`"
    )]
    #[case::bad_mode("mode: bogus", "1 | mode: bogus")]
    #[case::bad_action("actions: { blocked: refuse }", "unknown variant `refuse`")]
    #[case::two_documents("mode: warn\n---\nmode: warn\n", "multiple YAML documents")]
    #[case::glob_namespace(
        "exemptions: { namespaces: [ok, 'a[b'] }",
        "exemptions.namespaces[1]: error parsing glob"
    )]
    #[case::glob_image(
        "exemptions: { images: ['{a,b'] }",
        "exemptions.images[0]: error parsing glob"
    )]
    #[case::glob_registry(
        "registries: [{ registry: a }, { registry: '[x' }]",
        "registries[1].registry: error"
    )]
    #[case::bad_platform(
        "platforms: [linux/amd64, linux]",
        r#"platforms[1]: invalid platform "linux""#
    )]
    #[case::no_platforms("platforms: []", "platforms must list at least one platform")]
    fn invalid_policies(#[case] yaml: &str, #[case] expected: &str) {
        let err = Policy::from_yaml(yaml, "test.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("invalid policy test.yaml: "), "{err}");
        assert!(err.contains(expected), "{err}");
    }

    #[test]
    fn load_bounds_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, "mode: warn\n").unwrap();
        assert_eq!(Policy::load(&path).unwrap().mode(), Mode::Warn);
        std::fs::write(&path, format!("# {}\n", "x".repeat(MAX_POLICY_BYTES))).unwrap();
        let err = Policy::load(&path).unwrap_err();
        assert!(matches!(err, PolicyError::TooLarge { .. }), "{err:?}");
        let err = Policy::load(dir.path().join("missing.yaml")).unwrap_err();
        assert!(matches!(&err, PolicyError::Read { path, .. } if path.ends_with("missing.yaml")));
    }

    #[rstest]
    #[case::blocked(Verdict::Blocked, false, 0)]
    #[case::unauthorized(Verdict::Unauthorized, false, 0)]
    #[case::not_found(Verdict::NotFound, false, 0)]
    #[case::invalid(Verdict::Invalid, false, 0)]
    #[case::unavailable(Verdict::Unavailable, true, 1)]
    #[case::pullable(Verdict::Pullable, true, 0)]
    fn default_action_per_verdict(
        #[case] verdict: Verdict,
        #[case] allowed: bool,
        #[case] warnings: usize,
    ) {
        let d = Policy::default().decide("default", &[finding("quay.io/org/app:1", verdict)]);
        assert_eq!((d.allowed, d.message.is_none()), (allowed, allowed));
        assert_eq!(d.warnings.len(), warnings);
    }

    #[test]
    fn unavailable_is_allowed_with_a_warning() {
        let mut f = finding("quay.io/org/app:1", Verdict::Unavailable);
        f.reason = "the registry did not answer within the deadline of 10s".to_owned();
        let d = Policy::default().decide("default", &[f]);
        assert!(d.allowed);
        assert_eq!(
            d.warnings,
            [
                r#"pullgate: container "app": image "quay.io/org/app:1" could not be checked (registry unavailable): the registry did not answer within the deadline of 10s"#
            ]
        );
        assert_eq!(d.audit["decision"], "warn");
    }

    #[test]
    fn warn_mode_never_denies() {
        let d = policy("mode: warn").decide("default", &[blocked_layer("quay.io/org/app:1")]);
        assert!(d.allowed && d.message.is_none());
        assert_eq!(d.warnings.len(), 1);
        assert!(d.warnings[0].contains("is blocked by the registry"));
        assert_eq!(d.audit["decision"], "warn");
        assert!(d.audit["images"].contains(r#""action":"warn""#));
    }

    #[test]
    fn namespace_exemption() {
        let f = [finding("quay.io/org/app:1", Verdict::NotFound)];
        let d = Policy::default().decide("kube-system", &f);
        assert!(d.allowed && d.warnings.is_empty() && d.message.is_none());
        assert_eq!(
            d.audit,
            BTreeMap::from([("decision".into(), "exempt".into())])
        );
        let p = policy("exemptions: { namespaces: [team-*, tools] }");
        assert!(p.decide("team-a", &f).allowed && p.decide("tools", &f).allowed);
        assert!(!p.decide("tools-2", &f).allowed && !p.decide("kube-system", &f).allowed);
    }

    #[rstest]
    #[case::nested_repository("registry.internal/base/team/nested/app:1", true)]
    #[case::as_written("busybox:1.36", true)]
    #[case::written_otherwise("docker.io/library/busybox:1.36", false)]
    #[case::normalised("alpine:3", true)]
    #[case::digest(&format!("alpine@{BLOB}"), true)]
    #[case::other_repository("registry.internal/other/app:1", false)]
    #[case::other_registry("registry.internal.evil.example/base/app:1", false)]
    fn image_exemption(#[case] image: &str, #[case] exempt: bool) {
        let p = policy(
            r#"exemptions: { images: ["registry.internal/base/*", "busybox:*", "docker.io/library/alpine[:@]*"] }"#,
        );
        assert_eq!(admitted(&p, image, Verdict::Blocked), exempt);
    }

    #[test]
    fn registry_overrides() {
        let p = policy(
            r#"
registries:
  - registry: registry.corp.example:5000
    actions: { unauthorized: allow }
  - registry: "*.corp.example*"
    actions: { unauthorized: warn, not_found: allow }
  - registry: REGISTRY.corp.example
    actions: { unauthorized: allow }
"#,
        );
        let action = |host| p.action(Verdict::Unauthorized, host);
        assert_eq!(action("registry.corp.example:5000"), Action::Allow);
        assert_eq!(
            action("other.corp.example:5000"),
            Action::Warn,
            "first match wins"
        );
        assert_eq!(
            action("registry.corp.example"),
            Action::Warn,
            "the port is part of the host"
        );
        assert_eq!(
            action("quay.io"),
            Action::Deny,
            "other registries keep the default"
        );
        // The first match decides even for verdicts it does not name: they fall back to global.
        assert_eq!(
            p.action(Verdict::NotFound, "registry.corp.example:5000"),
            Action::Deny
        );
        assert_eq!(p.action(Verdict::NotFound, "X.CORP.example"), Action::Allow);
        let unauthorized = Verdict::Unauthorized;
        assert!(admitted(
            &p,
            "registry.corp.example:5000/team/app:1",
            unauthorized
        ));
        assert!(!admitted(&p, "quay.io/team/app:1", unauthorized));
    }

    #[test]
    fn deny_message_says_what_to_do() {
        let migrate = Finding {
            container: "migrate".to_owned(),
            location: "init container".to_owned(),
            reason: "manifest: HTTP 404 Not Found".to_owned(),
            registry_message: Some("MANIFEST_UNKNOWN: manifest unknown".to_owned()),
            ..finding("registry.example.com/team/migrate:2", Verdict::NotFound)
        };
        let ok = finding("quay.io/org/ok:1", Verdict::Pullable);
        let findings = [
            blocked_layer("registry.example.com/team/app:1.0"),
            migrate,
            ok,
        ];
        let d = Policy::default().decide("default", &findings);
        assert!(!d.allowed);
        let expected = format!(
            "pullgate: 2 of 3 images cannot be pulled:\n\
             - container \"app\": image \"registry.example.com/team/app:1.0\" is blocked by the registry: layer sha256:1a2b3c4d5e6f: HTTP 403 Forbidden: {DENIED}\n\
             - init container \"migrate\": image \"registry.example.com/team/migrate:2\" was not found: manifest: HTTP 404 Not Found: MANIFEST_UNKNOWN: manifest unknown"
        );
        assert_eq!(d.message.as_deref(), Some(expected.as_str()));
        assert_eq!(d.audit["decision"], "deny");
        let images: serde_json::Value = serde_json::from_str(&d.audit["images"]).unwrap();
        assert_eq!(images.as_array().unwrap().len(), 2);
        assert_eq!(images[1]["image"], "registry.example.com/team/migrate:2");
        assert_eq!(images[1]["verdict"], "not_found");
        assert_eq!(images[0]["action"], "deny");
    }

    #[test]
    fn detail_adds_what_the_reason_lacks() {
        let mut f = blocked_layer("quay.io/org/app:1");
        f.reason = "HTTP 403\nForbidden".to_owned();
        let expected = format!("blob sha256:1a2b3c4d5e6f: HTTP 403 Forbidden: {DENIED}");
        assert_eq!(detail(&f), expected);
        f.reason.clear();
        f.failed_blob = None;
        assert_eq!(detail(&f), DENIED);
    }

    #[test]
    fn warnings_are_capped_at_256_characters() {
        let mut f = blocked_layer("quay.io/org/app:1");
        f.registry_message = Some(format!("DENIED: {}", "very long explanation ".repeat(40)));
        let d = policy("mode: warn").decide("default", &[f]);
        let warning = &d.warnings[0];
        assert_eq!(warning.chars().count(), MAX_WARNING_CHARS);
        assert!(
            warning.starts_with("pullgate: container \"app\""),
            "{warning}"
        );
        assert!(
            warning.contains("DENIED: very long") && warning.ends_with('…'),
            "{warning}"
        );
    }

    #[test]
    fn many_images_are_truncated() {
        let findings: Vec<Finding> = (0..30)
            .map(|i| blocked_layer(&format!("quay.io/org/app{i}:1")))
            .collect();
        let d = Policy::default().decide("default", &findings);
        let message = d.message.unwrap();
        assert!(message.starts_with("pullgate: 30 of 30 images cannot be pulled:"));
        assert!(message.contains("app19:1") && !message.contains("app20:1"));
        assert!(message.ends_with("\n- and 10 more"), "{message}");
        assert_eq!(d.audit["images_omitted"], "10");
        let d = policy("mode: warn").decide("default", &findings);
        assert_eq!(d.warnings.len(), MAX_WARNINGS + 1);
        let last = &d.warnings[MAX_WARNINGS];
        assert_eq!(last, "pullgate: 18 more images with problems not listed");
        assert!(d.warnings.iter().map(|w| w.chars().count()).sum::<usize>() <= 4096);
    }
}
