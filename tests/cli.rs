//! `pullgate check` as a user runs it: the real binary against the real registry.

mod support;

use std::process::Command;

use serde_json::Value;
use support::*;
use tempfile::TempDir;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn pullgate(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_pullgate"))
        .args(args)
        .env_remove("PULLGATE_CREDS")
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_follows_the_kubelet_keyring_and_reports_json() {
    let pki = Pki::new();
    let storage = TempDir::new().unwrap();
    let seed = Registry::start(&pki, storage.path(), RegistryAuth::Anonymous).unwrap();
    push_image(
        &seed.base(),
        &test_client(&pki),
        "team/app",
        Some("v1"),
        &ImageSpec::new().with_layers(&[10, 20, 30]),
    )
    .await
    .unwrap();
    let reg = Registry::start(
        &pki,
        storage.path(),
        RegistryAuth::htpasswd(&[("bob", "hunter2")]),
    )
    .unwrap();
    let host = reg.host();
    let dir = TempDir::new().unwrap();
    // Both keys match; the more specific one sorts first and is wrong, so the second must
    // be tried. A key for another port must not match at all.
    let config = serde_json::json!({
        "auths": {
            format!("https://{host}/team"): { "auth": b64("bob:stale") },
            host.clone(): { "username": "bob", "password": "hunter2" },
            "127.0.0.1:1": { "auth": b64("eve:nope") },
        },
        "credsStore": "desktop"
    });
    let config_path = dir.path().join("config.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let ca = pki.ca_path().to_str().unwrap().to_owned();
    let reference = format!("{host}/team/app:v1");

    let run = pullgate(&[
        "check",
        "--json",
        "--ca-file",
        &ca,
        "--docker-config",
        config_path.to_str().unwrap(),
        &reference,
    ]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let reports: Value = serde_json::from_str(&run.stdout).unwrap();
    let r = &reports[0];
    assert_eq!(r["verdict"], "pullable");
    assert_eq!(r["reference"], reference);
    assert_eq!(r["attempts"], 2);
    assert_eq!(r["platforms"][0]["platform"], "linux/amd64");
    assert_eq!(r["blobs"].as_array().unwrap().len(), 4);
    assert!(r["digest"].as_str().unwrap().starts_with("sha256:"));
    assert!(r["requests"].as_u64().unwrap() >= 5);
    // One manifest GET per credential tried; not metered, so no pulls are reported.
    assert_eq!(r["manifest_gets"], 2);
    assert_eq!(r["manifest_heads"], 0);
    assert!(
        r.get("pulls").is_none() && r.get("rate_limit").is_none(),
        "{r}"
    );
    assert!(r["elapsed_ms"].is_u64());
    // Secrets never reach the output.
    assert!(!run.stdout.contains("hunter2") && !run.stderr.contains("hunter2"));

    // Without credentials: a human table and exit code 1.
    let run = pullgate(&[
        "check",
        "--ca-file",
        &ca,
        &reference,
        "nginx:Latest@sha256:bad",
    ]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.starts_with("REFERENCE"), "{}", run.stdout);
    assert!(run.stdout.contains("unauthorized"), "{}", run.stdout);
    assert!(run.stdout.contains("invalid"), "{}", run.stdout);

    // --creds, tried before the config's entries.
    let run = pullgate(&[
        "check",
        "--json",
        "--ca-file",
        &ca,
        "--creds",
        "bob:hunter2",
        &reference,
    ]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let reports: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(reports[0]["credential"], "--creds");
}

#[test]
fn garbage_references_are_invalid_without_network() {
    let run = pullgate(&[
        "check",
        "--json",
        "UPPER/case",
        "a/b@sha256:xyz",
        &"x".repeat(5000),
    ]);
    assert_eq!(run.code, 1);
    let reports: Value = serde_json::from_str(&run.stdout).unwrap();
    for r in reports.as_array().unwrap() {
        assert_eq!(r["verdict"], "invalid", "{r}");
        assert_eq!(r["requests"], 0);
    }
    assert!(reports[0]["reason"].as_str().unwrap().contains("lowercase"));
}

#[test]
fn configuration_errors_exit_2() {
    let run = pullgate(&[
        "check",
        "--docker-config",
        "/nonexistent/config.json",
        "nginx",
    ]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("/nonexistent/config.json"),
        "{}",
        run.stderr
    );
    let run = pullgate(&["check", "--platform", "linux", "nginx"]);
    assert_eq!(run.code, 2);
    let run = pullgate(&["check"]);
    assert_eq!(run.code, 2);
}

/// `--hosts-dir` as a user gives it: the nodes' containerd certs.d, with a plain-HTTP
/// registry declared and a mirror that is down in front of it. The JSON names the host that
/// answered and what each host said; a broken hosts.toml is a configuration error (exit 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_probes_through_the_nodes_hosts_dir() {
    let storage = TempDir::new().unwrap();
    let plain = Registry::start_plain_http(storage.path()).unwrap();
    push_image(
        &plain.base(),
        &test_client(&Pki::new()),
        "team/app",
        Some("1.0"),
        &ImageSpec::new().with_layers(&[10]),
    )
    .await
    .unwrap();
    let host = plain.host();
    let reference = format!("{host}/team/app:1.0");

    let run = pullgate(&["check", "--json", &reference]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let reports: Value = serde_json::from_str(&run.stdout).unwrap();
    let reason = reports[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("plain HTTP") && reason.contains("--hosts-dir"),
        "{reason}"
    );

    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let certs_d = TempDir::new().unwrap();
    std::fs::create_dir(certs_d.path().join(&host)).unwrap();
    std::fs::write(
        certs_d.path().join(&host).join("hosts.toml"),
        format!("server = \"http://{host}\"\n\n[host.\"http://{down}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
    )
    .unwrap();
    let dir = certs_d.path().to_str().unwrap();
    let run = pullgate(&["check", "--json", "--hosts-dir", dir, &reference]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let reports: Value = serde_json::from_str(&run.stdout).unwrap();
    let r = &reports[0];
    assert_eq!(r["verdict"], "pullable");
    assert_eq!(r["host"], format!("http://{host}/v2"));
    assert_eq!(r["hosts"][0]["host"], format!("http://{down}/v2"));
    assert_eq!(r["hosts"][0]["mirror"], true);
    assert!(
        r["hosts"][0]["answers"][0]
            .as_str()
            .unwrap()
            .starts_with("manifest: cannot reach"),
        "{r}"
    );
    assert_eq!(r["hosts"][1]["answers"][0], "manifest: served");

    // The same through the environment, as in a Deployment.
    let out = Command::new(env!("CARGO_BIN_EXE_pullgate"))
        .args(["check", &reference])
        .env("PULLGATE_HOSTS_DIR", dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    std::fs::write(
        certs_d.path().join(&host).join("hosts.toml"),
        "server = [not toml\n",
    )
    .unwrap();
    let run = pullgate(&["check", "--hosts-dir", dir, &reference]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("hosts.toml"), "{}", run.stderr);
    let run = pullgate(&[
        "check",
        "--hosts-dir",
        dir,
        "--registries-conf",
        dir,
        &reference,
    ]);
    assert_eq!(run.code, 2, "the two are exclusive: {}", run.stderr);
}

/// Service-account tokens for credential providers are requested through the API, so asking
/// for them without one is a configuration error, said before anything is served.
#[test]
fn provider_tokens_without_the_api_exit_2() {
    let dir = TempDir::new().unwrap();
    let ca = dir.path().join("ca.pem");
    let run = pullgate(&[
        "serve",
        "--no-kube",
        "--provider-service-account-tokens",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--dev-ca-out",
        ca.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("--provider-service-account-tokens needs the Kubernetes API"),
        "{}",
        run.stderr
    );
}
