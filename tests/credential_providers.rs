//! Node credentials from kubelet credential-provider plugins, end to end: a test plugin (a
//! Python script the test writes, run without a shell) gives the credential of a real
//! htpasswd `docker-registry`; `pullgate check` and the webhook use it as the kubelet would.

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use support::*;
use tempfile::TempDir;

/// A plugin directory with `test-provider`, answering `user:password` for `host` (or
/// failing), counting its runs in `runs`, and the config naming it.
struct Plugin {
    dir: TempDir,
}

impl Plugin {
    fn new(host: &str, answer: &str) -> Plugin {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let script = format!(
            r#"#!/usr/bin/env python3
import json, os, sys
request = json.load(sys.stdin)
assert request["kind"] == "CredentialProviderRequest", request
assert request["image"].startswith("{host}/"), request
with open(os.environ["RUNS"], "a") as runs:
    runs.write(request["image"] + "\n")
{answer}
print(json.dumps({{
    "apiVersion": request["apiVersion"],
    "kind": "CredentialProviderResponse",
    "cacheKeyType": "Registry",
    "cacheDuration": "1h",
    "auth": {{"{host}": {{"username": "alice", "password": "s3cret"}}}},
}}))
"#
        );
        let path = bin.join("test-provider");
        std::fs::write(&path, script).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = format!(
            "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n  - name: test-provider\n    matchImages:\n      - \"{host}\"\n    defaultCacheDuration: \"1h\"\n    apiVersion: credentialprovider.kubelet.k8s.io/v1\n    env:\n      - name: RUNS\n        value: \"{}\"\n",
            dir.path().join("runs").display()
        );
        std::fs::write(dir.path().join("config.yaml"), config).unwrap();
        Plugin { dir }
    }

    fn config(&self) -> String {
        self.dir.path().join("config.yaml").display().to_string()
    }

    fn bin_dir(&self) -> String {
        self.dir.path().join("bin").display().to_string()
    }

    /// `check` arguments naming this plugin, then `rest`.
    fn args<'a>(&'a self, config: &'a str, bin_dir: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![
            "--image-credential-provider-config",
            config,
            "--image-credential-provider-bin-dir",
            bin_dir,
        ];
        args.extend_from_slice(rest);
        args
    }

    fn runs(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("runs"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }
}

fn check(args: &[&str]) -> (i32, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pullgate"))
        .arg("check")
        .arg("--json")
        .args(args)
        .env_remove("PULLGATE_CREDS")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (
        out.status.code().unwrap(),
        json,
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn private_registry(w: &World) -> Registry {
    Registry::start(
        &w.pki,
        w.storage.path(),
        RegistryAuth::htpasswd(&[("alice", "s3cret")]),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_image_without_pull_secrets_is_pullable_through_the_nodes_plugin() {
    let w = World::new();
    w.push("team/app", "v1", ImageSpec::new().with_layers(&[100]))
        .await;
    let registry = private_registry(&w);
    let host = registry.host();
    let reference = format!("{host}/team/app:v1");
    let ca = w.pki.ca_path().display().to_string();

    let (code, reports, _) = check(&["--ca-file", &ca, &reference]);
    assert_eq!(
        (code, reports[0]["verdict"].as_str()),
        (1, Some("unauthorized"))
    );

    let plugin = Plugin::new(&host, "");
    let (config, bin_dir) = (plugin.config(), plugin.bin_dir());
    let (code, reports, stderr) =
        check(&plugin.args(&config, &bin_dir, &["--ca-file", &ca, &reference]));
    assert_eq!(code, 0, "{reports}\n{stderr}");
    assert_eq!(reports[0]["verdict"], "pullable");
    assert_eq!(
        reports[0]["credential"],
        "credential provider test-provider"
    );
    assert_eq!(plugin.runs(), 1);
    assert!(!stderr.contains("s3cret") && !reports.to_string().contains("s3cret"));

    // The node's docker config comes before the plugins, as in the kubelet's keyring.
    let config = w.storage.path().join("config.json");
    std::fs::write(
        &config,
        json!({"auths": {host.as_str(): {"username": "alice", "password": "s3cret"}}}).to_string(),
    )
    .unwrap();
    let docker_config = config;
    let (config, bin_dir) = (plugin.config(), plugin.bin_dir());
    let (code, reports, _) = check(&plugin.args(
        &config,
        &bin_dir,
        &[
            "--ca-file",
            &ca,
            "--docker-config",
            docker_config.to_str().unwrap(),
            &reference,
        ],
    ));
    assert_eq!(code, 0);
    let credential = reports[0]["credential"].as_str().unwrap();
    assert!(credential.starts_with("--docker-config"), "{credential}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_plugin_is_named_and_its_401_is_not_conclusive() {
    let w = World::new();
    w.push("team/app", "v1", ImageSpec::new().with_layers(&[100]))
        .await;
    let registry = private_registry(&w);
    let host = registry.host();
    let reference = format!("{host}/team/app:v1");
    let ca = w.pki.ca_path().display().to_string();
    let plugin = Plugin::new(&host, "print('secret-looking output'); sys.exit(3)");
    let (config, bin_dir) = (plugin.config(), plugin.bin_dir());
    let (code, reports, stderr) =
        check(&plugin.args(&config, &bin_dir, &["--ca-file", &ca, &reference]));
    assert_eq!(code, 1);
    assert_eq!(reports[0]["verdict"], "unavailable", "{reports}");
    let reason = reports[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("credential provider test-provider failed"),
        "{reason}"
    );
    assert!(
        stderr.contains("credential provider test-provider failed"),
        "{stderr}"
    );
    assert!(!stderr.contains("secret-looking output"), "{stderr}");

    // Half the kubelet's pair is a configuration error.
    let (code, _, stderr) = check(&[
        "--image-credential-provider-config",
        &plugin.config(),
        &reference,
    ]);
    assert_eq!(code, 2, "{stderr}");
}

/// A burst of reviews of one image runs the plugin once (its answer is cached per registry
/// for the hour it says, and concurrent asks are merged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_reviews_runs_the_plugin_once() {
    let w = World::new();
    w.push("team/app", "v1", ImageSpec::new().with_layers(&[100]))
        .await;
    let registry = private_registry(&w);
    let host = registry.host();
    let plugin = Plugin::new(&host, "");
    let hook = webhook_with(&w, &plugin).await;
    let answers = futures_util::future::join_all((0..500).map(|i| {
        let (hook, review) = (&hook, pod_review(i, &host));
        async move { hook.review(&review).await }
    }))
    .await;
    for a in &answers {
        assert_eq!(a["allowed"], true, "{a}");
    }
    assert_eq!(plugin.runs(), 1);
}

/// The webhook, running `plugin` as the node's credential provider.
async fn webhook_with(w: &World, plugin: &Plugin) -> Webhook {
    let mut config = test_config(&w.pki);
    config.credential_providers = pullgate::credentials::CredentialProviders::load(
        Path::new(&plugin.config()),
        Path::new(&plugin.bin_dir()),
    )
    .unwrap();
    Webhook::start(config, &w.pki).await
}

/// An AdmissionReview of a Pod with one container pulling `host/team/app:v1`.
fn pod_review(uid: usize, host: &str) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": format!("uid-{uid}"),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "alice"},
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": format!("p{uid}"), "namespace": "shop"},
                "spec": {"containers": [{"name": "app", "image": format!("{host}/team/app:v1")}]}
            }
        }
    })
}

/// In the webhook, a plugin that fails is a warning naming it, and the 401 it leaves is not
/// a refusal: the node may still get the credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_warns_of_a_failing_plugin_and_does_not_refuse_on_its_401() {
    let w = World::new();
    w.push("team/app", "v1", ImageSpec::new().with_layers(&[100]))
        .await;
    let registry = private_registry(&w);
    let host = registry.host();
    let plugin = Plugin::new(&host, "sys.exit(1)");
    let hook = webhook_with(&w, &plugin).await;
    let answer = hook.review(&pod_review(1, &host)).await;
    assert_eq!(answer["allowed"], true, "{answer}");
    let said = warnings(&answer).join("\n");
    assert!(
        said.contains("credential provider test-provider failed"),
        "{said}"
    );
    assert!(said.contains("could not be checked"), "{said}");
}
