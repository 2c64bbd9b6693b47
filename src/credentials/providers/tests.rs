//! Plugins are small Python 3 programs written into a temporary bin dir. Each checks the
//! request (kind, apiVersion, image), its arguments and its environment, exits 1 if anything is
//! off, appends the image to a runs file, then answers as the test says. Runs are counted from
//! that file, never timed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::future::join_all;
use tempfile::TempDir;

use super::*;

const V1: &str = "credentialprovider.kubelet.k8s.io/v1";
const V1BETA1: &str = "credentialprovider.kubelet.k8s.io/v1beta1";

/// Checks the request, records the run, and defines `answer(...)`.
const PRELUDE: &str = r#"#!/usr/bin/env python3
import json, os, sys, time
req = json.loads(sys.stdin.read())
api = os.environ["EXPECT_API"]
if req != {"kind": "CredentialProviderRequest", "apiVersion": api, "image": req.get("image")}:
    sys.exit(1)
if sys.argv[1:] != ["--flag", "x y"] or "PATH" not in os.environ:
    sys.exit(1)
with open(os.environ["RUNS_FILE"], "a") as runs:
    runs.write(req["image"] + "\n")
def answer(key_type="Image", auth=None, duration=None, api=api, kind="CredentialProviderResponse"):
    resp = {"kind": kind, "apiVersion": api, "cacheKeyType": key_type}
    if duration is not None:
        resp["cacheDuration"] = duration
    if auth is not None:
        resp["auth"] = auth
    print(json.dumps(resp))
def cred(user):
    return {"username": user, "password": "pw-" + user}
"#;

/// One provider of a test configuration.
struct Fake<'a> {
    name: &'a str,
    match_images: &'a [&'a str],
    default_cache_duration: &'a str,
    api_version: &'a str,
    /// Python run after the prelude.
    body: &'a str,
}

impl<'a> Fake<'a> {
    fn new(name: &'a str, body: &'a str) -> Self {
        Fake {
            name,
            match_images: &["*.io", "*.*.io"],
            default_cache_duration: "0s",
            api_version: V1,
            body,
        }
    }
}

struct Setup {
    dir: TempDir,
    providers: CredentialProviders,
}

impl Setup {
    fn new(plugins: &[Fake<'_>]) -> Self {
        Self::with_extra(plugins, "")
    }

    /// `extra` is appended to the last provider's YAML (for `tokenAttributes`).
    fn with_extra(plugins: &[Fake<'_>], extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let mut yaml = String::from(
            "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n",
        );
        for p in plugins {
            write_plugin(&bin, p.name, &format!("{PRELUDE}{}\n", p.body));
            let runs = dir.path().join(format!("{}.runs", p.name));
            write!(
                yaml,
                "  - name: {}\n    matchImages: {:?}\n    defaultCacheDuration: \"{}\"\n    apiVersion: {}\n    args: [\"--flag\", \"x y\"]\n    env:\n      - name: RUNS_FILE\n        value: {}\n      - name: EXPECT_API\n        value: {}\n",
                p.name,
                p.match_images,
                p.default_cache_duration,
                p.api_version,
                runs.display(),
                p.api_version,
            )
            .unwrap();
        }
        yaml.push_str(extra);
        let config = dir.path().join("config.yaml");
        std::fs::write(&config, yaml).unwrap();
        let providers = CredentialProviders::load(&config, &bin).unwrap();
        Setup { dir, providers }
    }

    fn runs(&self, name: &str) -> usize {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.runs")))
            .map(|text| text.lines().count())
            .unwrap_or(0)
    }

    async fn ask(&self, image: &str) -> Provided {
        self.providers.credentials(image, in_secs(60)).await
    }
}

fn write_plugin(bin: &Path, name: &str, script: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = bin.join(name);
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn in_secs(secs: u64) -> std::time::Instant {
    std::time::Instant::now() + Duration::from_secs(secs)
}

fn users(provided: &Provided) -> Vec<&str> {
    provided.credentials.iter().map(|c| c.username()).collect()
}

fn only_failure(provided: &Provided) -> &str {
    assert!(provided.credentials.is_empty(), "{provided:?}");
    assert_eq!(provided.failures.len(), 1, "{provided:?}");
    &provided.failures[0].reason
}

// ---- Cache keys and durations (plugin.go: provide, getCachedCredentials) ----

#[tokio::test]
async fn an_image_key_answer_serves_that_image_only() {
    let s = Setup::new(&[Fake::new(
        "p",
        r#"answer("Image", {"*.io": cred("u")}, "1h")"#,
    )]);
    assert_eq!(users(&s.ask("r.io/a").await), ["u"]);
    assert_eq!(users(&s.ask("r.io/a").await), ["u"]);
    assert_eq!(s.runs("p"), 1);
    s.ask("r.io/b").await;
    assert_eq!(s.runs("p"), 2);
}

#[tokio::test]
async fn a_registry_key_answer_serves_every_image_of_the_host() {
    let s = Setup::new(&[Fake::new(
        "p",
        r#"answer("Registry", {"*.io": cred("u")}, "1h")"#,
    )]);
    s.ask("r.io/a").await;
    assert_eq!(users(&s.ask("r.io/team/b").await), ["u"]);
    assert_eq!(s.runs("p"), 1);
    s.ask("s.io/a").await;
    assert_eq!(s.runs("p"), 2);
}

#[tokio::test]
async fn a_global_key_answer_serves_every_image() {
    let s = Setup::new(&[Fake::new(
        "p",
        r#"answer("Global", {"*.io": cred("u")}, "1h")"#,
    )]);
    s.ask("r.io/a").await;
    assert_eq!(users(&s.ask("s.io/b").await), ["u"]);
    assert_eq!(s.runs("p"), 1);
}

#[tokio::test]
async fn a_zero_duration_is_not_kept_and_absent_falls_back_to_the_default() {
    let zero = "answer(\"Global\", {\"*.io\": cred(\"u\")}, \"0s\")";
    let absent = "answer(\"Global\", {\"*.io\": cred(\"u\")})";
    let s = Setup::new(&[
        Fake {
            default_cache_duration: "1h",
            match_images: &["zero.io"],
            ..Fake::new("zero", zero)
        },
        Fake {
            match_images: &["absent.io"],
            ..Fake::new("absent_no_default", absent)
        },
        Fake {
            default_cache_duration: "1h",
            match_images: &["default.io"],
            ..Fake::new("absent_default", absent)
        },
    ]);
    for image in ["zero.io/a", "absent.io/a", "default.io/a"] {
        for _ in 0..2 {
            assert_eq!(users(&s.ask(image).await), ["u"]);
        }
    }
    assert_eq!(s.runs("zero"), 2);
    assert_eq!(s.runs("absent_no_default"), 2);
    assert_eq!(s.runs("absent_default"), 1);
}

#[tokio::test]
async fn a_kept_answer_is_reused_until_it_expires() {
    let s = Setup::new(&[Fake::new(
        "p",
        r#"answer("Image", {"*.io": cred("u")}, "1h")"#,
    )]);
    s.ask("r.io/a").await;
    tokio::time::pause();
    s.ask("r.io/a").await;
    assert_eq!(s.runs("p"), 1);
    tokio::time::advance(Duration::from_secs(3601)).await;
    tokio::time::resume();
    assert_eq!(users(&s.ask("r.io/a").await), ["u"]);
    assert_eq!(s.runs("p"), 2);
}

#[tokio::test]
async fn five_hundred_concurrent_asks_run_the_plugin_once() {
    // A duration of 0 keeps nothing, so one run means the asks were merged, not cached. On this
    // single-threaded test runtime every ask joins before the run's task is first polled.
    let s = Setup::new(&[Fake::new(
        "p",
        r#"answer("Image", {"*.io": cred("u")}, "0s")"#,
    )]);
    let asks = join_all((0..500).map(|_| s.ask("r.io/a"))).await;
    assert!(asks.iter().all(|p| users(p) == ["u"]));
    assert_eq!(s.runs("p"), 1);
}

// ---- The auth map (plugins.go: one BasicDockerKeyring over every provider's answer) ----

#[tokio::test]
async fn auth_keys_match_like_keyring_keys_most_specific_first() {
    let s = Setup::new(&[Fake::new(
        "p",
        r#"answer("Image", {
            "*.registry.io": cred("glob"),
            "team.registry.io/app": cred("path"),
            "team.registry.io": cred("host"),
            "team.registry.io:5000": cred("port"),
            "other.io": cred("other"),
        })"#,
    )]);
    let provided = s.ask("team.registry.io/app/web").await;
    assert_eq!(users(&provided), ["path", "host", "glob"]);
    assert_eq!(provided.credentials[0].password(), "pw-path");
    assert!(
        provided
            .credentials
            .iter()
            .all(|c| c.source() == "credential provider p")
    );
    assert_eq!(
        users(&s.ask("team.registry.io/other").await),
        ["host", "glob"]
    );
}

#[tokio::test]
async fn providers_combine_in_config_order_and_only_matching_ones_run() {
    let s = Setup::new(&[
        Fake::new("first", r#"answer("Image", {"r.io": cred("first")})"#),
        Fake::new("second", r#"answer("Image", {"r.io": cred("second")})"#),
        Fake {
            match_images: &["elsewhere.io"],
            ..Fake::new(
                "unmatched",
                r#"answer("Image", {"r.io": cred("unmatched")})"#,
            )
        },
    ]);
    let provided = s.ask("r.io/a").await;
    assert_eq!(users(&provided), ["first", "second"]);
    assert!(provided.failures.is_empty());
    assert_eq!(s.runs("unmatched"), 0);
}

#[tokio::test]
async fn a_v1beta1_provider_is_asked_in_v1beta1() {
    let s = Setup::new(&[Fake {
        api_version: V1BETA1,
        ..Fake::new("p", r#"answer("Image", {"*.io": cred("u")})"#)
    }]);
    assert_eq!(users(&s.ask("r.io/a").await), ["u"]);
}

// ---- Failures: the kubelet logs them and uses no credentials from that provider ----

#[tokio::test]
async fn a_failing_plugin_gives_a_failure_and_the_others_still_count() {
    let s = Setup::new(&[
        Fake::new("broken", "sys.stderr.write('token hunter2'); sys.exit(3)"),
        Fake::new("good", r#"answer("Image", {"*.io": cred("u")})"#),
    ]);
    let provided = s.ask("r.io/a").await;
    assert_eq!(users(&provided), ["u"]);
    let failure = &provided.failures[0];
    assert_eq!(failure.provider, "broken");
    assert!(failure.reason.contains("exit status: 3"), "{failure}");
    assert!(failure.reason.contains("13 bytes on stderr"), "{failure}");
    assert!(!failure.reason.contains("hunter2"));
}

#[tokio::test]
async fn a_plugin_that_hangs_is_killed_at_the_deadline() {
    let s = Setup::new(&[Fake::new(
        "p",
        "open(os.environ['RUNS_FILE'] + '.pid', 'w').write(str(os.getpid())); time.sleep(3600)",
    )]);
    let provided = s.providers.credentials("r.io/a", in_secs(2)).await;
    assert!(only_failure(&provided).contains("deadline"), "{provided:?}");
    // A plugin killed before it wrote its pid is gone as well.
    let Ok(pid) = std::fs::read_to_string(s.dir.path().join("p.runs.pid")) else {
        return;
    };
    let stat = format!("/proc/{pid}/stat");
    for _ in 0..400 {
        match std::fs::read_to_string(&stat) {
            // Gone, or dead and not yet reaped.
            Err(_) => return,
            Ok(text)
                if text
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z') =>
            {
                return;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("plugin {pid} still running after its deadline");
}

#[tokio::test]
async fn answers_the_kubelet_refuses_give_failures_that_quote_nothing() {
    let cases = [
        (
            "sys.stdout.write('{\"password\": \"hunter2\"' * 60000)",
            "output larger than 1048576 bytes",
        ),
        (
            "print('{not json hunter2')",
            "invalid JSON at line 1 column 2",
        ),
        (
            r#"answer("Image", {"*.io": {"username": "u", "password": "hunter2"}}, api="credentialprovider.kubelet.k8s.io/v1beta1")"#,
            "did not match expected apiVersion:credentialprovider.kubelet.k8s.io/v1, actual apiVersion:credentialprovider.kubelet.k8s.io/v1beta1",
        ),
        (
            r#"answer("Image", kind="CredentialProviderRequest")"#,
            "not a CredentialProviderResponse",
        ),
        (r#"answer("Images")"#, "cacheKeyType \"Images\""),
        (
            r#"answer("Image", {"*.io": {"username": "u", "password": "hunter2", "auth": "x"}})"#,
            "does not decode",
        ),
    ];
    for (body, expected) in cases {
        let s = Setup::new(&[Fake::new("p", body)]);
        let provided = s.ask("r.io/a").await;
        let reason = only_failure(&provided);
        assert!(reason.contains(expected), "{body}: {reason}");
        assert!(!reason.contains("hunter2"), "{reason}");
    }
}

#[tokio::test]
async fn failures_are_not_kept() {
    let s = Setup::new(&[Fake {
        default_cache_duration: "1h",
        ..Fake::new("p", "sys.exit(1)")
    }]);
    s.ask("r.io/a").await;
    s.ask("r.io/a").await;
    assert_eq!(s.runs("p"), 2);
}

#[tokio::test]
async fn a_provider_with_token_attributes_is_skipped_with_a_failure() {
    let s = Setup::with_extra(
        &[Fake::new("p", r#"answer("Image", {"*.io": cred("u")})"#)],
        "    tokenAttributes:\n      serviceAccountTokenAudience: aud\n      requireServiceAccount: true\n      cacheType: ServiceAccount\n",
    );
    let provided = s.ask("r.io/a").await;
    assert!(only_failure(&provided).contains("service-account token"));
    assert_eq!(s.runs("p"), 0);
    assert!(s.ask("nomatch.example.com/a").await.failures.is_empty());
}

#[tokio::test]
async fn debug_output_holds_no_password() {
    let s = Setup::new(&[Fake::new(
        "p",
        r#"answer("Image", {"*.io": {"username": "u", "password": "hunter2"}})"#,
    )]);
    let provided = s.ask("r.io/a").await;
    assert_eq!(provided.credentials[0].password(), "hunter2");
    assert!(!format!("{provided:?} {:?}", s.providers).contains("hunter2"));
}

#[tokio::test]
async fn no_providers_give_nothing() {
    let none = CredentialProviders::default();
    assert!(none.is_empty());
    let provided = none.credentials("r.io/a", in_secs(1)).await;
    assert!(provided.credentials.is_empty() && provided.failures.is_empty());
}

// ---- Loading (plugin.go RegisterCredentialProviderPlugins, config.go and config_test.go) ----

/// Writes `files` (name, text) into a temporary directory with a bin dir holding an executable
/// for every name in `plugins`, then loads `config` (relative to the directory).
fn load(
    files: &[(&str, &str)],
    plugins: &[&str],
    config: &str,
) -> Result<CredentialProviders, String> {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    for name in plugins {
        write_plugin(&bin, name, "#!/usr/bin/env python3\n");
    }
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    CredentialProviders::load(&dir.path().join(config), &bin).map_err(|e| e.to_string())
}

fn load_one(yaml: &str) -> Result<CredentialProviders, String> {
    load(
        &[("config.yaml", yaml)],
        &["test", "test1", "test2", "foobar"],
        "config.yaml",
    )
}

fn provider_yaml(config_api: &str, provider: &str) -> String {
    format!(
        "kind: CredentialProviderConfig\napiVersion: kubelet.config.k8s.io/{config_api}\nproviders:\n{provider}"
    )
}

const FOOBAR: &str = "  - name: foobar\n    matchImages: [foobar.registry.io]\n    defaultCacheDuration: 1m\n    apiVersion: credentialprovider.kubelet.k8s.io/v1\n";

#[test]
fn the_kubelets_valid_configs_load() {
    let yaml_v1alpha1 = "---\nkind: CredentialProviderConfig\napiVersion: kubelet.config.k8s.io/v1alpha1\nproviders:\n  - name: test\n    matchImages:\n    - \"registry.io/foobar\"\n    defaultCacheDuration: 10m\n    apiVersion: credentialprovider.kubelet.k8s.io/v1alpha1\n    args:\n    - --v=5\n    env:\n    - name: FOO\n      value: BAR";
    // The kubelet's JSON fixture is indented with tabs, which JSON allows and YAML does not.
    let json = "{\n\t\"kind\": \"CredentialProviderConfig\",\n\t\"apiVersion\": \"kubelet.config.k8s.io/v1alpha1\",\n\t\"providers\": [\n\t\t{\n\t\t\t\"name\": \"test\",\n\t\t\t\"matchImages\": [\"registry.io/foobar\"],\n\t\t\t\"defaultCacheDuration\": \"10m\",\n\t\t\t\"apiVersion\": \"credentialprovider.kubelet.k8s.io/v1alpha1\",\n\t\t\t\"args\": [\"--v=5\"],\n\t\t\t\"env\": [{\"name\": \"FOO\", \"value\": \"BAR\"}]\n\t\t}\n\t]\n}";
    let two = |config_api: &str, api: &str| {
        provider_yaml(
            config_api,
            &format!(
                "  - name: test1\n    matchImages:\n    - \"registry.io/one\"\n    defaultCacheDuration: 10m\n    apiVersion: {api}\n  - name: test2\n    matchImages:\n    - \"registry.io/*\"\n    - \"foobar.registry.io/*\"\n    defaultCacheDuration: 10m\n    apiVersion: {api}\n    args:\n    - --v=5\n"
            ),
        )
    };
    for yaml in [
        yaml_v1alpha1.to_owned(),
        json.to_owned(),
        two("v1alpha1", "credentialprovider.kubelet.k8s.io/v1alpha1"),
        two("v1beta1", V1BETA1),
        two("v1", V1),
        provider_yaml(
            "v1",
            &format!(
                "{FOOBAR}    tokenAttributes:\n      serviceAccountTokenAudience: audience\n      requireServiceAccount: true\n      cacheType: Token\n      requiredServiceAccountAnnotationKeys: [now-with-dashes/simple-1, now-with-dashes/simple-2]\n      optionalServiceAccountAnnotationKeys: [now-with-dashes/simple-3]\n"
            ),
        ),
    ] {
        let loaded = load_one(&yaml).unwrap_or_else(|e| panic!("{yaml}\n{e}"));
        assert!(!loaded.is_empty());
    }
}

#[test]
fn the_kubelets_invalid_configs_are_refused_with_its_words() {
    let p = |name: &str, images: &str, duration: &str, api: &str| {
        provider_yaml(
            "v1",
            &format!(
                "  - name: {name}\n    matchImages: {images}\n{duration}    apiVersion: {api}\n"
            ),
        )
    };
    let minute = "    defaultCacheDuration: 1m\n";
    let alpha = "credentialprovider.kubelet.k8s.io/v1alpha1";
    let token =
        |attrs: &str| provider_yaml("v1", &format!("{FOOBAR}    tokenAttributes:\n{attrs}"));
    let cases: Vec<(String, &str)> = vec![
        (
            "kind: CredentialProviderConfig\napiVersion: kubelet.config.k8s.io/v1\nproviders: []\n"
                .into(),
            "providers: Required value: at least 1 item in plugins is required",
        ),
        (
            p("foobar", "[]", minute, alpha),
            "providers.matchImages: Required value: at least 1 item in matchImages is required",
        ),
        (
            p("foobar", "[foobar.registry.io]", "", alpha),
            "providers.defaultCacheDuration: Required value",
        ),
        (
            p("\"foo/../bar\"", "[foobar.registry.io]", minute, alpha),
            r#"providers.name: Invalid value: "foo/../bar": provider name cannot contain '/'"#,
        ),
        (
            p("\".\"", "[foobar.registry.io]", minute, alpha),
            r#"providers.name: Invalid value: ".": provider name cannot be '.'"#,
        ),
        (
            p("\"..\"", "[foobar.registry.io]", minute, alpha),
            r#"providers.name: Invalid value: "..": provider name cannot be '..'"#,
        ),
        (
            p("\"foo bar\"", "[foobar.registry.io]", minute, alpha),
            r#"providers.name: Invalid value: "foo bar": provider name cannot contain spaces"#,
        ),
        (
            p("foobar", "[foobar.registry.io]", minute, "\"\""),
            "providers.apiVersion: Required value",
        ),
        (
            p(
                "foobar",
                "[foobar.registry.io]",
                minute,
                "credentialprovider.kubelet.k8s.io/v1alpha0",
            ),
            r#"providers.apiVersion: Unsupported value: "credentialprovider.kubelet.k8s.io/v1alpha0": supported values: "credentialprovider.kubelet.k8s.io/v1", "credentialprovider.kubelet.k8s.io/v1alpha1", "credentialprovider.kubelet.k8s.io/v1beta1""#,
        ),
        (
            p(
                "foobar",
                "[foobar.registry.io]",
                "    defaultCacheDuration: -1m\n",
                alpha,
            ),
            "providers.defaultCacheDuration: Invalid value: -1m0s: defaultCacheDuration must be greater than or equal to 0",
        ),
        (
            p("foobar", "[\"%invalid%\"]", minute, alpha),
            r#"providers.matchImages: Invalid value: "%invalid%": match image is invalid: "#,
        ),
        (
            token(
                "      requiredServiceAccountAnnotationKeys: [prefix.io/annotation-1]\n      requireServiceAccount: true\n      cacheType: Token\n",
            ),
            "providers.tokenAttributes.serviceAccountTokenAudience: Required value",
        ),
        (
            token("      serviceAccountTokenAudience: audience\n      cacheType: Token\n"),
            "providers.tokenAttributes.requireServiceAccount: Required value",
        ),
        (
            token(
                "      serviceAccountTokenAudience: audience\n      requireServiceAccount: true\n      cacheType: Token\n      requiredServiceAccountAnnotationKeys: [cantendwithadash-, now-with-dashes/simple]\n",
            ),
            r#"providers.tokenAttributes.requiredServiceAccountAnnotationKeys: Invalid value: "cantendwithadash-": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"#,
        ),
        (
            token(
                "      serviceAccountTokenAudience: audience\n      requireServiceAccount: true\n      cacheType: Token\n      optionalServiceAccountAnnotationKeys: [now-with-dashes/simple, now-with-dashes/simple]\n",
            ),
            r#"providers.tokenAttributes.optionalServiceAccountAnnotationKeys: Duplicate value: "now-with-dashes/simple""#,
        ),
        (
            token(
                "      serviceAccountTokenAudience: audience\n      requireServiceAccount: true\n      cacheType: Token\n      requiredServiceAccountAnnotationKeys: [now-with-dashes/simple-1, now-with-dashes/simple-2]\n      optionalServiceAccountAnnotationKeys: [now-with-dashes/simple-2, now-with-dashes/simple-3]\n",
            ),
            r#"providers.tokenAttributes: Invalid value: []string{"now-with-dashes/simple-2"}: annotation keys cannot be both required and optional"#,
        ),
        (
            token(
                "      serviceAccountTokenAudience: audience\n      requireServiceAccount: false\n      cacheType: Token\n      requiredServiceAccountAnnotationKeys: [now-with-dashes/simple-1]\n",
            ),
            "providers.tokenAttributes.requiredServiceAccountAnnotationKeys: Forbidden: requireServiceAccount cannot be false when requiredServiceAccountAnnotationKeys is set",
        ),
        (
            token(
                "      serviceAccountTokenAudience: audience\n      requireServiceAccount: true\n",
            ),
            "providers.tokenAttributes.cacheType: Required value: cacheType is required to be set when tokenAttributes is specified. Supported values are: ServiceAccount, Token",
        ),
        (
            token(
                "      serviceAccountTokenAudience: audience\n      requireServiceAccount: true\n      cacheType: Pod\n",
            ),
            r#"providers.tokenAttributes.cacheType: Unsupported value: "Pod": supported values: "ServiceAccount", "Token""#,
        ),
        (
            provider_yaml(
                "v1",
                &format!(
                    "{}    tokenAttributes:\n      serviceAccountTokenAudience: audience\n      requireServiceAccount: true\n      cacheType: Token\n",
                    FOOBAR.replace(
                        "credentialprovider.kubelet.k8s.io/v1\n",
                        "credentialprovider.kubelet.k8s.io/v1beta1\n"
                    )
                ),
            ),
            "providers.tokenAttributes: Forbidden: tokenAttributes is only supported for credentialprovider.kubelet.k8s.io/v1 API version",
        ),
        // Decoding (config_test.go Test_readCredentialProviderConfig).
        (
            FOOBAR_CONFIG.replace("kind: CredentialProviderConfig", "kind: WrongKind"),
            r#"no kind "WrongKind" is registered for version "kubelet.config.k8s.io/v1""#,
        ),
        (
            FOOBAR_CONFIG.replace("kubelet.config.k8s.io/v1", "foobar/v1alpha1"),
            r#"no kind "CredentialProviderConfig" is registered for version "foobar/v1alpha1""#,
        ),
        (
            FOOBAR_CONFIG.replace(
                "    defaultCacheDuration: 1m\n",
                "    defaultCacheDuration: 1m\n    unknownField: should not be here\n",
            ),
            "unknownField",
        ),
        (
            provider_yaml(
                "v1beta1",
                &format!(
                    "{}    tokenAttributes:\n      serviceAccountTokenAudience: audience\n",
                    FOOBAR.replace("k8s.io/v1\n", "k8s.io/v1beta1\n")
                ),
            ),
            r#"strict decoding error: unknown field "providers[0].tokenAttributes""#,
        ),
        (
            provider_yaml("v1", &format!("{FOOBAR}{FOOBAR}")),
            r#"duplicate provider name "foobar" found in configuration file(s)"#,
        ),
        // metav1.Duration is a JSON string; an unquoted YAML number is not.
        (
            FOOBAR_CONFIG.replace("defaultCacheDuration: 1m", "defaultCacheDuration: 0"),
            "invalid type: integer `0`, expected a duration string",
        ),
        (
            FOOBAR_CONFIG.replace("defaultCacheDuration: 1m", "defaultCacheDuration: 1d"),
            "unknown unit",
        ),
    ];
    for (yaml, expected) in cases {
        let err = load_one(&yaml)
            .err()
            .unwrap_or_else(|| panic!("loaded:\n{yaml}"));
        assert!(
            err.contains(expected),
            "{yaml}\nwant: {expected}\ngot:  {err}"
        );
    }
}

const FOOBAR_CONFIG: &str = "kind: CredentialProviderConfig\napiVersion: kubelet.config.k8s.io/v1\nproviders:\n  - name: foobar\n    matchImages: [foobar.registry.io]\n    defaultCacheDuration: 1m\n    apiVersion: credentialprovider.kubelet.k8s.io/v1\n";

#[test]
fn a_config_directory_merges_its_files_in_lexical_order() {
    let one = FOOBAR_CONFIG.replace("foobar", "test1");
    let two_json = r#"{"kind": "CredentialProviderConfig", "apiVersion": "kubelet.config.k8s.io/v1", "providers": [{"name": "test2", "matchImages": ["registry.io/two"], "defaultCacheDuration": "5m", "apiVersion": "credentialprovider.kubelet.k8s.io/v1"}]}"#;
    let files = [
        ("d/config-003.json", two_json),
        ("d/config-002.txt", "not a config"),
        ("d/config-001.yaml", one.as_str()),
    ];
    let loaded = load(&files, &["test1", "test2"], "d").unwrap();
    assert_eq!(format!("{loaded:?}"), r#"["test1", "test2"]"#);

    let dup = [("d/a.yaml", one.as_str()), ("d/b.yml", one.as_str())];
    let err = load(&dup, &["test1"], "d").unwrap_err();
    assert!(err.contains(r#"duplicate provider name "test1""#), "{err}");

    let err = load(&[("d/readme.md", "x")], &[], "d").unwrap_err();
    assert!(
        err.contains("no configuration files found in directory"),
        "{err}"
    );

    let bad = FOOBAR_CONFIG.replace("kind: CredentialProviderConfig", "kind: WrongKind");
    let err = load(
        &[("d/a.yaml", one.as_str()), ("d/b.yaml", &bad)],
        &["test1"],
        "d",
    )
    .unwrap_err();
    assert!(err.contains("no kind \"WrongKind\""), "{err}");
}

#[test]
fn the_bin_dir_and_every_plugin_must_exist_and_be_executable() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.yaml");
    std::fs::write(&config, FOOBAR_CONFIG).unwrap();
    let err = CredentialProviders::load(&config, &dir.path().join("nope")).unwrap_err();
    assert!(err.to_string().contains("plugin binary directory"), "{err}");
    assert!(err.to_string().ends_with("did not exist"), "{err}");

    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let err = CredentialProviders::load(&config, &bin).unwrap_err();
    assert!(matches!(err, ProviderError::PluginMissing { .. }), "{err}");

    std::fs::write(bin.join("foobar"), "#!/usr/bin/env python3\n").unwrap();
    let err = CredentialProviders::load(&config, &bin).unwrap_err();
    assert!(
        matches!(err, ProviderError::PluginNotExecutable { .. }),
        "{err}"
    );

    write_plugin(&bin, "foobar", "#!/usr/bin/env python3\n");
    assert!(CredentialProviders::load(&config, &bin).is_ok());
}
