//! The policy's decisions and texts.

use super::render::{MAX_LINE_CHARS, MAX_WARNING_CHARS, MAX_WARNINGS, WARNINGS_BUDGET, detail};
use super::*;
use crate::oci::digest::Digest;
use crate::oci::reference::ImageRef;
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
        location: Location::Container,
        verdict,
        reason: format!("manifest: {verdict}"),
        failed_blob: None,
        registry_message: None,
        caution: false,
        host: None,
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
        failed_blob: Some(Digest::parse(BLOB).unwrap()),
        registry_message: Some(DENIED.to_owned()),
        ..finding(image, Verdict::Blocked)
    }
}

/// Whether one finding for `image` with `verdict` is admitted in namespace `default`.
fn admitted(p: &Policy, image: &str, verdict: Verdict) -> bool {
    p.decide("default", &[finding(image, verdict)]).allowed()
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
    assert!(
        matches!(err, PolicyError::Read(ReadError::TooLarge { .. })),
        "{err:?}"
    );
    let err = Policy::load(dir.path().join("missing.yaml")).unwrap_err();
    assert!(
        matches!(&err, PolicyError::Read(ReadError::Io { what, .. }) if what.ends_with("missing.yaml"))
    );
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
    assert_eq!((d.allowed(), d.message.is_none()), (allowed, allowed));
    assert_eq!(d.warnings.len(), warnings);
}

#[test]
fn unavailable_is_allowed_with_a_warning() {
    let mut f = finding("quay.io/org/app:1", Verdict::Unavailable);
    f.reason = "the registry did not answer within the deadline of 10s".to_owned();
    let d = Policy::default().decide("default", &[f]);
    assert!(d.allowed());
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
    assert!(d.allowed() && d.message.is_none());
    assert_eq!(d.warnings.len(), 1);
    assert!(d.warnings[0].contains("is blocked by the registry"));
    assert_eq!(d.audit["decision"], "warn");
    assert!(d.audit["images"].contains(r#""action":"warn""#));
}

#[test]
fn namespace_exemption() {
    let f = [finding("quay.io/org/app:1", Verdict::NotFound)];
    let d = Policy::default().decide("kube-system", &f);
    assert!(d.allowed() && d.warnings.is_empty() && d.message.is_none());
    assert_eq!(
        d.audit,
        BTreeMap::from([("decision".into(), "exempt".into())])
    );
    let p = policy("exemptions: { namespaces: [team-*, tools] }");
    assert!(p.decide("team-a", &f).allowed() && p.decide("tools", &f).allowed());
    assert!(!p.decide("tools-2", &f).allowed() && !p.decide("kube-system", &f).allowed());
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
        location: Location::InitContainer,
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
    assert!(!d.allowed());
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
fn a_long_warning_keeps_its_start_and_the_registrys_last_words() {
    let mut f = blocked_layer("quay.io/org/app:1");
    f.registry_message = Some(format!(
        "DENIED: {}the end of the reason",
        "very long explanation ".repeat(80)
    ));
    let d = policy("mode: warn").decide("default", &[f]);
    let warning = &d.warnings[0];
    assert_eq!(warning.chars().count(), MAX_WARNING_CHARS);
    assert!(
        warning.starts_with("pullgate: container \"app\""),
        "{warning}"
    );
    assert!(warning.contains("DENIED: very long"), "{warning}");
    assert!(
        warning.contains('…') && warning.ends_with("the end of the reason"),
        "{warning}"
    );
}

/// The issue's case: a presigned redirect URL in front of the cause. The URL loses its
/// middle, the cause stays whole.
#[test]
fn a_long_url_loses_its_middle_not_the_cause() {
    let mut f = blocked_layer("quay.io/org/app:1");
    f.verdict = Verdict::Unavailable;
    f.failed_blob = None;
    f.registry_message = None;
    let url = format!(
        "https://prod-registry-storage.s3.eu-west-1.amazonaws.com/docker/registry/v2/blobs/sha256/1a/data?X-Amz-Signature={}",
        "f".repeat(300)
    );
    f.reason = format!(
        "GET {url} failed: dns error: error resolving DNS: failed to lookup address information: Name or service not known"
    );
    let d = policy("mode: warn").decide("default", &[f]);
    let warning = &d.warnings[0];
    assert!(warning.chars().count() <= MAX_WARNING_CHARS, "{warning}");
    assert!(
        warning.ends_with("failed to lookup address information: Name or service not known"),
        "{warning}"
    );
    assert!(
        warning.contains("https://prod-registry-storage.s3"),
        "{warning}"
    );
    assert!(!warning.contains(&"f".repeat(100)), "{warning}");
}

#[test]
fn all_warnings_stay_within_what_the_apiserver_passes_whole() {
    let findings: Vec<Finding> = (0..12)
        .map(|i| {
            let mut f = blocked_layer(&format!("quay.io/org/app{i}:1"));
            f.registry_message = Some(format!("DENIED: {}", "long words ".repeat(200)));
            f
        })
        .collect();
    let d = policy("mode: warn").decide("default", &findings);
    let total: usize = d.warnings.iter().map(|w| w.chars().count()).sum();
    assert!(total <= WARNINGS_BUDGET, "{total}");
    // Each still says which image and how it ends.
    for (i, w) in d.warnings.iter().enumerate() {
        assert!(w.contains(&format!("app{i}:1")), "{w}");
        assert!(w.trim_end().ends_with("long words"), "{w}");
    }
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

#[rstest]
#[case::hub_by_default("", "nginx:1.27", true)]
#[case::hub_every_name("", "index.docker.io/library/nginx:1", true)]
#[case::hub_api_name("", "registry-1.docker.io/library/nginx:1", true)]
#[case::others_not_by_default("", "ghcr.io/org/app:1", false)]
#[case::hub_unmarked(
    "registries: [{registry: docker.io, metered: false}]",
    "nginx:1",
    false
)]
#[case::hub_unmarked_every_name(
    "registries: [{registry: docker.io, metered: false}]",
    "index.docker.io/library/nginx:1",
    false
)]
#[case::other_marked(
    "registries: [{registry: \"*.corp.example\", metered: true}]",
    "mirror.corp.example/app:1",
    true
)]
#[case::port_is_part_of_the_host(
    "registries: [{registry: \"mirror.corp.example\", metered: true}]",
    "mirror.corp.example:5000/app:1",
    false
)]
#[case::first_match_decides(
    "registries: [{registry: docker.io, actions: {unavailable: deny}}, {registry: \"*\", metered: true}]",
    "nginx:1",
    true
)]
#[case::first_match_without_metered_keeps_the_default(
    "registries: [{registry: \"*.example\", actions: {unavailable: deny}}, {registry: \"*\", metered: true}]",
    "r.example/app:1",
    false
)]
fn metered_registries(#[case] yaml: &str, #[case] image: &str, #[case] want: bool) {
    let image = ImageRef::parse(image).unwrap();
    assert_eq!(policy(yaml).metered(&image), want);
}

#[test]
fn metered_must_be_a_boolean() {
    let e = Policy::from_yaml(
        "registries: [{registry: docker.io, metered: sometimes}]",
        "test.yaml",
    )
    .unwrap_err();
    assert!(e.to_string().contains("metered"), "{e}");
}

#[test]
fn a_pullable_image_built_for_another_architecture_is_admitted_with_a_warning() {
    let caution = "built for linux/amd64 only (a single-platform image, no index): a linux/arm64 node pulls it, but its processes will not start there (exec format error)";
    let foreign = Finding {
        reason: caution.to_owned(),
        caution: true,
        ..finding("r.example/app:1", Verdict::Pullable)
    };
    let d = Policy::default().decide("default", std::slice::from_ref(&foreign));
    assert!(d.allowed());
    assert_eq!(d.kind, DecisionKind::Warn);
    assert_eq!(d.warnings.len(), 1, "{:?}", d.warnings);
    assert!(
        d.warnings[0].contains("exec format error"),
        "{:?}",
        d.warnings
    );
    assert!(
        d.warnings[0].contains("r.example/app:1"),
        "{:?}",
        d.warnings
    );
    // An exempt image is not warned about; a plain pullable one neither.
    let exempt = policy("exemptions: { images: [\"r.example/*\"] }");
    assert!(exempt.decide("default", &[foreign]).warnings.is_empty());
    let plain = finding("r.example/app:1", Verdict::Pullable);
    let d = Policy::default().decide("default", &[plain]);
    assert_eq!((d.kind, d.warnings.len()), (DecisionKind::Allow, 0));
}
