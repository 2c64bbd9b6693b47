//! Auditing what already runs, end to end: the stand-in API server serves a cluster (paged
//! lists, Leases, Events, on the real REST paths), the registries are real `docker-registry`
//! servers (one behind a policy proxy that can start blocking a layer), and pullgate runs as a
//! user runs it: `pullgate audit` with a kubeconfig, and `serve --audit-interval` as a library.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use pullgate::audit::AuditSettings;
use serde_json::{Value, json};
use support::*;
use tempfile::TempDir;

fn pod_spec(images: &[&str]) -> Value {
    let containers: Vec<Value> = images
        .iter()
        .enumerate()
        .map(|(i, image)| json!({"name": format!("c{i}"), "image": image}))
        .collect();
    json!({"containers": containers})
}

/// A controller of `resource` (`deployments`, `cronjobs`…) whose pods pull `images`.
fn controller(resource: &str, name: &str, images: &[&str]) -> (String, Value) {
    let template = json!({"metadata": {"labels": {"app": name}}, "spec": pod_spec(images)});
    let object = match resource {
        "cronjobs" => {
            json!({"spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": {
            "metadata": template["metadata"], "spec": {"restartPolicy": "OnFailure", "containers": template["spec"]["containers"]}}}}}})
        }
        "jobs" => json!({"spec": {"template": {"metadata": template["metadata"],
            "spec": {"restartPolicy": "Never", "containers": template["spec"]["containers"]}}},
            "status": {"active": 1}}),
        _ => {
            json!({"spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}}, "template": template}})
        }
    };
    let api_version = match resource {
        "cronjobs" | "jobs" => "batch/v1",
        "replicationcontrollers" => "v1",
        _ => "apps/v1",
    };
    (api_version.to_owned(), object)
}

/// A kubeconfig for `api`, as `kubectl config` writes one.
fn kubeconfig(dir: &Path, api: &ApiServer, pki: &Pki) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(pki.ca_pem());
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\nusers:\n- name: test\n  user:\n    token: test-token\ncontexts:\n- name: test\n  context: {{cluster: test, user: test, namespace: default}}\ncurrent-context: test\n",
        api.base()
    );
    let path = dir.join("kubeconfig");
    std::fs::write(&path, config).unwrap();
    path.display().to_string()
}

fn audit(kubeconfig: &str, ca: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pullgate"))
        .arg("audit")
        .args(["--ca-file", ca])
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("PULLGATE_POLICY")
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Hundreds of workloads in several namespaces, every verdict class, a shared image, kinds that
/// are and are not audited, an exempt namespace, and lists in pages of 25.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_reports_every_workload_with_its_verdict_and_probes_a_shared_image_once() {
    let w = World::new();
    let app = w
        .push("team/app", "v1", ImageSpec::new().with_layers(&[100, 200]))
        .await;
    w.push("team/locked", "v1", ImageSpec::new().with_layers(&[300]))
        .await;
    let proxy = PolicyProxy::start(&w.pki, &w.seed).await;
    proxy.rule(Rule::new(
        Some(reqwest::Method::GET),
        &format!("/blobs/{}", app.layer_digests[1]),
        Action::denied("blocked by policy: CVE-2026-0001"),
    ));
    let private = Registry::start(
        &w.pki,
        w.storage.path(),
        RegistryAuth::htpasswd(&[("alice", "s3cret")]),
    )
    .unwrap();
    // The shared image goes through a proxy without rules, which counts its manifest GETs.
    let counting = PolicyProxy::start(&w.pki, &w.seed).await;
    let (seed, blocked_host, private_host) = (w.seed.host(), proxy.host(), private.host());
    let shared = format!("{}/team/app:v1", counting.host());
    let api = ApiServer::start(&w.pki).await;
    api.put(
        "v1",
        "nodes",
        "",
        "node-a",
        json!({"status": {"nodeInfo": {"operatingSystem": "linux", "architecture": "amd64"}}}),
    );

    // Every namespace has its `default` ServiceAccount, as in a real cluster.
    for ns in ["shop", "payments", "search", "kube-system"] {
        api.put_service_account(ns, "default", &[]);
    }
    // 150 Deployments over three namespaces share one image.
    for i in 0..150 {
        let ns = ["shop", "payments", "search"][i % 3];
        let (v, o) = controller("deployments", &format!("web-{i}"), &[&shared]);
        api.put(&v, "deployments", ns, &format!("web-{i}"), o);
    }
    let cases = [
        (
            "statefulsets",
            "blocked",
            format!("{blocked_host}/team/app:v1"),
        ),
        ("daemonsets", "gone", format!("{seed}/team/missing:v1")),
        (
            "cronjobs",
            "private",
            format!("{private_host}/team/locked:v1"),
        ),
        ("replicationcontrollers", "bad", "Not/A:Ref:".to_owned()),
        ("jobs", "down", "127.0.0.1:9/team/app:v1".to_owned()),
    ];
    for (resource, name, image) in &cases {
        let (v, o) = controller(resource, name, &[image]);
        api.put(&v, resource, "shop", name, o);
    }
    // Not audited: a Deployment's ReplicaSet, a finished Job, a CronJob's Job, a controller's Pod.
    let (_, mut rs) = controller("replicasets", "web-0-5d9f", &["127.0.0.1:9/never:1"]);
    rs["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web-0", "uid": api.uid("deployments", "shop", "web-0"), "controller": true}]);
    api.put("apps/v1", "replicasets", "shop", "web-0-5d9f", rs);
    let (_, mut done) = controller("jobs", "finished", &["127.0.0.1:9/never:1"]);
    done["status"] = json!({"succeeded": 1, "completionTime": "2026-11-30T00:00:00Z"});
    api.put("batch/v1", "jobs", "shop", "finished", done);
    api.put("v1", "pods", "shop", "web-0-5d9f-abcde", json!({
        "metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-0-5d9f", "uid": api.uid("replicasets", "shop", "web-0-5d9f"), "controller": true}]},
        "spec": {"nodeName": "node-a", "containers": [{"name": "c0", "image": "127.0.0.1:9/never:1"}]}}));
    // A Deployment whose pods run on an arm64 node: its amd64-only image is checked for the
    // node's platform, not the policy's linux/amd64.
    api.put(
        "v1",
        "nodes",
        "",
        "node-arm",
        json!({"status": {"nodeInfo": {"operatingSystem": "linux", "architecture": "arm64"}}}),
    );
    let (v, o) = controller("deployments", "on-arm", &[&shared]);
    let on_arm = api.put(&v, "deployments", "search", "on-arm", o);
    let (_, mut arm_rs) = controller("replicasets", "on-arm-7c", &[&shared]);
    arm_rs["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": "on-arm", "uid": on_arm["metadata"]["uid"], "controller": true}]);
    let arm_rs = api.put("apps/v1", "replicasets", "search", "on-arm-7c", arm_rs);
    api.put("v1", "pods", "search", "on-arm-7c-xyz", json!({
        "metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "on-arm-7c", "uid": arm_rs["metadata"]["uid"], "controller": true}]},
        "spec": {"nodeName": "node-arm", "containers": [{"name": "c0", "image": shared}]}}));
    // Audited: a bare Pod. Exempt: kube-system.
    api.put(
        "v1",
        "pods",
        "search",
        "debug",
        json!({"spec": pod_spec(&[&shared])}),
    );
    let (v, o) = controller("deployments", "dns", &["127.0.0.1:9/never:1"]);
    api.put(&v, "deployments", "kube-system", "dns", o);

    let dir = TempDir::new().unwrap();
    let kubeconfig = kubeconfig(dir.path(), &api, &w.pki);
    let ca = w.pki.ca_path().display().to_string();
    let (code, out, err) = audit(&kubeconfig, &ca, &["-o", "json", "--chunk-size", "25"]);
    assert_eq!(code, 1, "{err}\n{out}");
    let pass: Value = serde_json::from_str(&out).unwrap();
    let rows = pass["rows"].as_array().unwrap();
    // 150 + 5 + on-arm + the bare Pod + kube-system's (exempt: decided without a probe, no row).
    assert_eq!(pass["workloads"], 158, "{out}");
    let verdict = |name: &str| {
        rows.iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no row for {name}: {out}"))["verdict"]
            .clone()
    };
    assert_eq!(verdict("web-42"), "pullable");
    assert_eq!(verdict("debug"), "pullable");
    assert_eq!(verdict("blocked"), "blocked");
    assert_eq!(verdict("gone"), "not_found");
    assert_eq!(verdict("private"), "unauthorized");
    assert_eq!(verdict("bad"), "invalid");
    assert_eq!(verdict("down"), "unavailable");
    // Checked for its node's linux/arm64, not the policy's linux/amd64: containerd pulls the
    // single-platform image there, but it will not run, which is a warning.
    let on_arm = rows.iter().find(|r| r["name"] == "on-arm").unwrap();
    assert_eq!(on_arm["verdict"], "pullable");
    assert_eq!(on_arm["decision"], "warn", "{on_arm}");
    assert!(
        on_arm["reason"].as_str().unwrap().contains("linux/arm64"),
        "{on_arm}"
    );
    assert_eq!(
        rows.iter().find(|r| r["name"] == "web-7").unwrap()["decision"],
        "allow"
    );
    for skipped in ["web-0-5d9f", "finished", "web-0-5d9f-abcde", "dns"] {
        assert!(
            rows.iter().all(|r| r["name"] != skipped),
            "{skipped} was audited"
        );
    }
    let deny = |name: &str| rows.iter().find(|r| r["name"] == name).unwrap()["decision"].clone();
    assert_eq!(deny("gone"), "deny");
    assert_eq!(deny("down"), "warn");
    assert_eq!(pass["denied"], 4, "{out}");
    // The shared image: one probe per platform set for its 152 workloads (151 checked for the
    // policy's linux/amd64, one for its node's linux/arm64), so two manifest GETs in all.
    assert_eq!(counting.count("/v2/team/app/manifests/"), 2);
    // Paged: 150 Deployments in pages of 25 is 6 pages at least.
    let deployment_pages = api
        .calls()
        .iter()
        .filter(|c| c.starts_with("/apis/apps/v1/deployments"))
        .count();
    assert!(deployment_pages >= 6, "{deployment_pages}");

    // The table and the namespace filter.
    let (code, table, _) = audit(&kubeconfig, &ca, &["-n", "payments"]);
    assert_eq!(code, 0, "{table}");
    assert!(table.contains("50 workloads"), "{table}");
    assert!(!table.contains("VERDICT"), "nothing to list: {table}");
}

/// A kubeconfig-less machine, a forbidden list: exit 2 with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_exit_2_with_the_reason() {
    let w = World::new();
    let api = ApiServer::start(&w.pki).await;
    api.forbid_resource("deployments");
    let dir = TempDir::new().unwrap();
    let kubeconfig = kubeconfig(dir.path(), &api, &w.pki);
    let ca = w.pki.ca_path().display().to_string();
    let (code, _, err) = audit(&kubeconfig, &ca, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("forbidden"), "{err}");
    let (code, _, err) = audit("/nonexistent/kubeconfig", &ca, &[]);
    assert_eq!(code, 2, "{err}");
}

/// Polls `check` every 50 ms for at most a minute (a loaded machine is slow, not wrong).
async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(Instant::now() < until, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `Some` once `hook`'s metrics contain `text`.
async fn shows(hook: &Webhook, text: &str) -> Option<()> {
    hook.metrics().await.contains(text).then_some(())
}

fn holder(api: &ApiServer) -> Option<String> {
    api.lease("pullgate", "pullgate-audit")
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
}

/// `serve --audit-interval` on two replicas: one holds the Lease and audits, the other stays
/// idle; a layer the registry starts blocking between two passes turns the series and raises
/// one Event; when the first replica stops, the second takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_holder_audits_and_a_newly_blocked_layer_turns_its_series() {
    let w = World::new();
    let app = w
        .push("team/app", "v1", ImageSpec::new().with_layers(&[100, 200]))
        .await;
    let proxy = PolicyProxy::start(&w.pki, &w.seed).await;
    let image = format!("{}/team/app:v1", proxy.host());
    let api = ApiServer::start(&w.pki).await;
    let (v, o) = controller("deployments", "api", &[&image]);
    api.put(&v, "deployments", "shop", "api", o);
    let (v, o) = controller(
        "deployments",
        "gone",
        &[&format!("{}/team/missing:v1", proxy.host())],
    );
    api.put(&v, "deployments", "shop", "gone", o);

    let start = |identity: &'static str| {
        let mut config = test_config(&w.pki);
        config.kube = Some(api.client());
        // Verdicts are kept shorter than a pass interval, as an hour's interval outlasts the
        // default ten minutes.
        config.cache.pullable_ttl = Duration::from_millis(100);
        config.cache.digest_pullable_ttl = Duration::from_millis(100);
        config.cache.refusal_ttl = Duration::from_millis(100);
        let mut settings = AuditSettings::every(Duration::from_millis(300), "pullgate", identity);
        settings.lease_duration = Duration::from_secs(3);
        config.audit = Some(settings);
        Webhook::start(config, &w.pki)
    };
    let mut first = start("replica-a").await;
    eventually("replica-a holds the lease", async || {
        (holder(&api).as_deref() == Some("replica-a")).then_some(())
    })
    .await;
    let second = start("replica-b").await;
    let problem = |name: &str, verdict: &str| {
        format!(
            "name=\"{name}\",container=\"c0\",image=\"{}/team/{}:v1\",verdict=\"{verdict}\"}} 1",
            proxy.host(),
            if name == "api" { "app" } else { "missing" }
        )
    };
    let metrics = eventually("a pass on replica-a", async || {
        let m = first.metrics().await;
        m.contains(&problem("gone", "not_found")).then_some(m)
    })
    .await;
    assert!(metrics.contains("pullgate_audit_leader 1"), "{metrics}");
    assert!(
        !metrics.contains("name=\"api\""),
        "api is pullable: {metrics}"
    );
    let idle = second.metrics().await;
    assert!(idle.contains("pullgate_audit_leader 0"), "{idle}");
    assert!(
        !idle.contains("pullgate_audit_passes_total{result=\"ok\"}"),
        "{idle}"
    );
    // One Event for the broken image, however many passes ran.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let events = api.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["reason"], "ImageNotPullable");
    assert_eq!(events[0]["type"], "Warning");
    assert_eq!(events[0]["involvedObject"]["name"], "gone");
    assert_eq!(events[0]["involvedObject"]["kind"], "Deployment");

    // The registry starts blocking a layer of api's image.
    proxy.rule(Rule::new(
        Some(reqwest::Method::GET),
        &format!("/blobs/{}", app.layer_digests[0]),
        Action::denied("blocked by policy: CVE-2026-0002"),
    ));
    eventually("api's series turns blocked", async || {
        shows(&first, &problem("api", "blocked")).await
    })
    .await;
    eventually("one event for api", async || {
        let events = api.events();
        (events.len() == 2).then_some(())
    })
    .await;
    assert!(
        api.events()
            .iter()
            .any(|e| e["involvedObject"]["name"] == "api"
                && e["message"].as_str().unwrap().contains("blocked"))
    );

    // The first replica stops: it gives the Lease up and the second takes over.
    first.shutdown().await.unwrap();
    eventually("replica-b holds the lease", async || {
        (holder(&api).as_deref() == Some("replica-b")).then_some(())
    })
    .await;
    eventually("a pass on replica-b", async || {
        shows(&second, &problem("api", "blocked")).await
    })
    .await;
    assert_eq!(
        api.events().len(),
        2,
        "the new leader raises nothing already raised"
    );
}

/// 10,000 pods (half of them bare, half of Deployments' ReplicaSets on nodes) listed in pages
/// of 500: the audit's peak memory stays under 256 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_pods_are_audited_within_a_memory_bound() {
    let w = World::new();
    w.push("team/app", "v1", ImageSpec::new().with_layers(&[100]))
        .await;
    let image = format!("{}/team/app:v1", w.seed.host());
    let api = ApiServer::start(&w.pki).await;
    api.put(
        "v1",
        "nodes",
        "",
        "node-a",
        json!({"status": {"nodeInfo": {"operatingSystem": "linux", "architecture": "amd64"}}}),
    );
    for d in 0..50 {
        let name = format!("web-{d}");
        let (v, o) = controller("deployments", &name, &[&image]);
        let deployment = api.put(&v, "deployments", "shop", &name, o);
        let (_, mut rs) = controller("replicasets", &format!("{name}-rs"), &[&image]);
        rs["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": name, "uid": deployment["metadata"]["uid"], "controller": true}]);
        let rs = api.put("apps/v1", "replicasets", "shop", &format!("{name}-rs"), rs);
        for p in 0..100 {
            api.put("v1", "pods", "shop", &format!("{name}-{p}"), json!({
                "metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{name}-rs"), "uid": rs["metadata"]["uid"], "controller": true}]},
                "spec": {"nodeName": "node-a", "containers": [{"name": "c0", "image": image}]}}));
        }
    }
    for p in 0..5000 {
        api.put(
            "v1",
            "pods",
            ["a", "b", "c", "d"][p % 4],
            &format!("job-{p}"),
            json!({"spec": pod_spec(&[&image])}),
        );
    }
    let dir = TempDir::new().unwrap();
    let kubeconfig = kubeconfig(dir.path(), &api, &w.pki);
    let ca = w.pki.ca_path().display().to_string();
    let (code, out, err) = audit(&kubeconfig, &ca, &["-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let pass: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(pass["workloads"], 5050);
    let rss = pass["peak_rss_bytes"].as_u64().unwrap();
    assert!(rss < 256 * 1024 * 1024, "peak RSS {rss} bytes");
    eprintln!(
        "10,000 pods: peak RSS {:.1} MiB, {} pages",
        rss as f64 / 1048576.0,
        pass["pages"]
    );
}
