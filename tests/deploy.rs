//! The install: deploy/ (manifests and kustomizations), the Dockerfile and
//! certs/make-certs.sh, checked against the code they deploy. No cluster runs here, so the
//! manifests are read as data (tests/run validates them against the Kubernetes schemas) and
//! compared with the server's own defaults, routes and kinds; the certificate script runs for
//! real, and the server (in-process, then the real binary with the Deployment's configuration)
//! serves what it produced to a client that trusts only the produced CA.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use clap::{CommandFactory, Parser};
use kube::core::GroupVersionKind;
use pullgate::admission::Kind;
use pullgate::cli::{Cli, Command as PullgateCommand, ServeArgs};
use pullgate::policy::{DEFAULT_POLICY_YAML, Policy};
use pullgate::server::CertFiles;
use pullgate::server::{
    Config, HEALTHZ_PATH, Listeners, METRICS_PATH, PolicySource, READYZ_PATH, TlsSource,
    WEBHOOK_PATH, review_budget,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::Value;
use tempfile::TempDir;

/// The namespace and Service every manifest and both certificate paths agree on.
const NAMESPACE: &str = "pullgate";
const SERVICE_HOST: &str = "pullgate.pullgate.svc";
const SANS: [&str; 4] = [
    "pullgate",
    "pullgate.pullgate",
    "pullgate.pullgate.svc",
    "pullgate.pullgate.svc.cluster.local",
];
/// Environment variables of the Deployment that are read by `main`, not by a `serve` flag.
const LOGGING_ENV: [&str; 2] = ["PULLGATE_LOG", "PULLGATE_LOG_FORMAT"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: impl AsRef<Path>) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every document of a YAML file, as JSON values (empty documents dropped).
fn yaml_docs(rel: impl AsRef<Path>) -> Vec<Value> {
    let rel = rel.as_ref();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&read(rel))
        .unwrap_or_else(|e| panic!("{}: {e}", rel.display()));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn str_list(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The resources of deploy/base, the way its kustomization lists them.
struct Manifests(Vec<Value>);

impl Manifests {
    fn base() -> Manifests {
        let kustomization = &yaml_docs("deploy/base/kustomization.yaml")[0];
        Manifests(
            str_list(&kustomization["resources"])
                .into_iter()
                .flat_map(|file| yaml_docs(Path::new("deploy/base").join(file)))
                .collect(),
        )
    }

    fn all(&self, kind: &str) -> Vec<&Value> {
        self.0.iter().filter(|d| d["kind"] == kind).collect()
    }

    fn one(&self, kind: &str) -> &Value {
        let all = self.all(kind);
        assert_eq!(all.len(), 1, "exactly one {kind} in deploy/base");
        all[0]
    }

    fn pod_spec(&self) -> &Value {
        &self.one("Deployment")["spec"]["template"]["spec"]
    }

    fn container(&self) -> &Value {
        let containers = self.pod_spec()["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 1, "one container");
        &containers[0]
    }

    fn env(&self) -> BTreeMap<String, String> {
        env_map(&self.container()["env"])
    }

    fn webhook(&self) -> &Value {
        let config = self.one("ValidatingWebhookConfiguration");
        let hooks = config["webhooks"].as_array().unwrap();
        assert_eq!(hooks.len(), 1, "one webhook");
        &hooks[0]
    }
}

fn env_map(env: &Value) -> BTreeMap<String, String> {
    env.as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let value = e["value"].as_str().unwrap_or_else(|| {
                panic!("env {} has a literal value", e["name"]);
            });
            (e["name"].as_str().unwrap().to_owned(), value.to_owned())
        })
        .collect()
}

/// `pullgate serve` as the Deployment runs it: its args, and its environment turned into the
/// flags clap reads those variables for. Variables that are no flag must be the logging ones.
fn deployment_serve_args(m: &Manifests) -> ServeArgs {
    let container = m.container();
    assert!(
        container.get("command").is_none(),
        "the image's ENTRYPOINT runs pullgate"
    );
    let mut argv: Vec<String> = vec!["pullgate".into()];
    argv.extend(str_list(&container["args"]).into_iter().map(str::to_owned));
    assert_eq!(argv.get(1).map(String::as_str), Some("serve"));
    let cli = Cli::command();
    let serve = cli.find_subcommand("serve").expect("a serve command");
    for (name, value) in m.env() {
        let flag = serve
            .get_arguments()
            .chain(cli.get_arguments())
            .find(|a| a.get_env().is_some_and(|e| e == name.as_str()));
        match flag {
            Some(arg) => {
                let mut words = vec![format!("--{}", arg.get_long().unwrap())];
                if arg.get_action().takes_values() {
                    words.push(value);
                } else if value != "true" {
                    continue;
                }
                // A top-level flag that is not global goes before the subcommand.
                let top_level = cli.get_arguments().any(|a| a.get_id() == arg.get_id());
                let at = if top_level && !arg.is_global_set() {
                    1
                } else {
                    argv.len()
                };
                argv.splice(at..at, words);
            }
            None => assert!(
                LOGGING_ENV.contains(&name.as_str()),
                "the Deployment sets {name}, which pullgate does not read"
            ),
        }
    }
    serve_args(&argv.iter().map(String::as_str).collect::<Vec<_>>())
}

fn serve_args(argv: &[&str]) -> ServeArgs {
    match Cli::try_parse_from(argv.iter().copied()) {
        Ok(Cli {
            command: PullgateCommand::Serve(args),
            ..
        }) => *args,
        Ok(_) => panic!("{argv:?} is not `serve`"),
        Err(e) => panic!("{argv:?}: {e}"),
    }
}

/// The volume mounted at the directory of `path`, and the file name within it.
fn mounted<'a>(m: &'a Manifests, path: &Path) -> (&'a Value, String) {
    let dir = path.parent().unwrap().to_str().unwrap();
    let mount = m.container()["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["mountPath"] == dir)
        .unwrap_or_else(|| panic!("nothing is mounted at {dir}"));
    assert_eq!(mount["readOnly"], true, "{dir} is mounted read-only");
    let volume = m.pod_spec()["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    let file = path.file_name().unwrap().to_str().unwrap().to_owned();
    (volume, file)
}

// ---------------------------------------------------------------------------------------------
// Kustomize

/// Every YAML file of a kustomization's directory is one of its resources or patches, and
/// everything it names exists: a manifest cannot be left out of `kubectl apply -k`.
#[test]
fn kustomizations_name_every_file_and_only_files_that_exist() {
    let mut dirs = vec![root().join("deploy")];
    let mut seen = 0;
    while let Some(dir) = dirs.pop() {
        let mut yaml_files = BTreeSet::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                yaml_files.insert(path.file_name().unwrap().to_str().unwrap().to_owned());
            }
        }
        if yaml_files.is_empty() {
            continue;
        }
        assert!(
            yaml_files.remove("kustomization.yaml"),
            "{} has YAML but no kustomization.yaml",
            dir.display()
        );
        seen += 1;
        let k = &yaml_docs(dir.join("kustomization.yaml"))[0];
        assert!(
            k["kind"] == "Kustomization" || k["kind"] == "Component",
            "{}: {:?}",
            dir.display(),
            k["kind"]
        );
        let mut named: Vec<&str> = str_list(&k["resources"]);
        named.extend(
            k["patches"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["path"].as_str()),
        );
        // Files a ConfigMap is generated from (`key=file` or `file`).
        for generator in k["configMapGenerator"].as_array().into_iter().flatten() {
            named.extend(
                str_list(&generator["files"])
                    .into_iter()
                    .map(|f| f.split_once('=').map_or(f, |(_, file)| file)),
            );
        }
        for name in &named {
            let target = dir.join(name);
            assert!(
                target.is_file() || target.join("kustomization.yaml").is_file(),
                "{}: {name} does not exist",
                dir.display()
            );
        }
        for file in &yaml_files {
            assert!(
                named.contains(&file.as_str()),
                "{}/{file} is not listed in its kustomization.yaml",
                dir.display()
            );
        }
    }
    assert!(seen >= 4, "deploy/, base/, cert-manager/, examples/");
    assert_eq!(
        str_list(&yaml_docs("deploy/kustomization.yaml")[0]["resources"]),
        ["base"],
        "`kubectl apply -k deploy/` installs the base"
    );
}

// ---------------------------------------------------------------------------------------------
// Policy and RBAC

#[test]
fn the_policy_configmap_is_the_default_policy_mounted_where_pullgate_reads_it() {
    let m = Manifests::base();
    let args = deployment_serve_args(&m);
    let policy_path = args.policy.expect("the Deployment names a policy file");
    let (volume, key) = mounted(&m, &policy_path);
    let name = volume["configMap"]["name"]
        .as_str()
        .expect("the policy is a ConfigMap");
    let configmap = m
        .all("ConfigMap")
        .into_iter()
        .find(|c| c["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no ConfigMap {name}"));
    let text = configmap["data"][key.as_str()]
        .as_str()
        .unwrap_or_else(|| panic!("ConfigMap {name} has no key {key}"));
    let parsed = Policy::from_yaml(text, "deploy/base/configmap.yaml").unwrap();
    assert_eq!(parsed, Policy::default());
    assert!(
        text == DEFAULT_POLICY_YAML,
        "deploy/base/configmap.yaml must carry src/policy/default-policy.yaml verbatim (indented by 4)"
    );
}

#[test]
fn the_cluster_role_grants_only_get_on_secrets_and_serviceaccounts() {
    let m = Manifests::base();
    assert!(m.all("Role").is_empty() && m.all("RoleBinding").is_empty());
    let role = m.one("ClusterRole");
    let rules = role["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1, "{rules:?}");
    let rule = &rules[0];
    let mut keys: Vec<&str> = rule
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        ["apiGroups", "resources", "verbs"],
        "no resourceNames, nonResourceURLs, …"
    );
    assert_eq!(str_list(&rule["apiGroups"]), [""]);
    let resources: BTreeSet<&str> = str_list(&rule["resources"]).into_iter().collect();
    assert_eq!(resources, BTreeSet::from(["secrets", "serviceaccounts"]));
    assert_eq!(str_list(&rule["verbs"]), ["get"]);
    assert!(role.get("aggregationRule").is_none());

    let binding = m.one("ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    let subjects = binding["subjects"].as_array().unwrap();
    assert_eq!(subjects.len(), 1);
    let sa = m.one("ServiceAccount");
    assert_eq!(subjects[0]["kind"], "ServiceAccount");
    assert_eq!(subjects[0]["name"], sa["metadata"]["name"]);
    assert_eq!(subjects[0]["namespace"], sa["metadata"]["namespace"]);

    let pod = m.pod_spec();
    assert_eq!(pod["serviceAccountName"], sa["metadata"]["name"]);
    assert_eq!(
        pod["automountServiceAccountToken"], true,
        "pullgate reads the API with its token"
    );
}

// ---------------------------------------------------------------------------------------------
// Ports, paths, timeouts

#[test]
fn ports_and_paths_match_the_servers_defaults_and_routes() {
    let m = Manifests::base();
    let args = deployment_serve_args(&m);
    assert_eq!(args.listen.port(), 8443);
    assert_eq!(args.admin_listen.port(), 8080);
    let container = m.container();
    let port = |name: &str| -> u64 {
        container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no container port {name}"))["containerPort"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(port("webhook"), u64::from(args.listen.port()));
    assert_eq!(port("admin"), u64::from(args.admin_listen.port()));

    for (probe, path) in [
        ("readinessProbe", READYZ_PATH),
        ("livenessProbe", HEALTHZ_PATH),
    ] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(get["port"], "admin", "{probe} on the admin port");
        assert!(get.get("scheme").is_none_or(|s| s == "HTTP"));
    }
    let annotations = &m.one("Deployment")["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/path"], METRICS_PATH);
    assert_eq!(
        annotations["prometheus.io/port"],
        args.admin_listen.port().to_string()
    );

    let service = m.one("Service");
    let pod_labels = &m.one("Deployment")["spec"]["template"]["metadata"]["labels"];
    for (k, v) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&pod_labels[k], v, "the Service selects the pods");
    }
    let webhook = m.webhook();
    let target = &webhook["clientConfig"]["service"];
    assert!(webhook["clientConfig"].get("url").is_none());
    assert_eq!(target["name"], service["metadata"]["name"]);
    assert_eq!(target["namespace"], service["metadata"]["namespace"]);
    assert_eq!(target["path"], WEBHOOK_PATH);
    let service_port = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == target["port"])
        .expect("the webhook calls a port of the Service");
    assert_eq!(target["port"], 443);
    assert_eq!(service_port["targetPort"], "webhook");
    assert_eq!(
        format!(
            "{}.{}.svc",
            service["metadata"]["name"].as_str().unwrap(),
            service["metadata"]["namespace"].as_str().unwrap()
        ),
        SERVICE_HOST
    );

    let policy = m.one("NetworkPolicy");
    for (k, v) in policy["spec"]["podSelector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&pod_labels[k], v, "the NetworkPolicy selects the pods");
    }
    let ingress_ports: Vec<&Value> = policy["spec"]["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|rule| rule["ports"].as_array().unwrap())
        .map(|p| &p["port"])
        .collect();
    assert!(ingress_ports.contains(&&Value::from("webhook")));
    assert!(ingress_ports.contains(&&Value::from("admin")));
    let webhook_rule = policy["spec"]["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["ports"][0]["port"] == "webhook")
        .unwrap();
    assert!(
        webhook_rule.get("from").is_none(),
        "the apiserver is no pod: the webhook port is open to every source"
    );
    let egress_ports: BTreeSet<u64> = policy["spec"]["egress"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|rule| rule["ports"].as_array().unwrap())
        .filter_map(|p| p["port"].as_u64())
        .collect();
    assert_eq!(egress_ports, BTreeSet::from([53, 443, 6443]));
}

#[test]
fn timeouts_match_the_review_budget_and_the_graceful_shutdown() {
    let m = Manifests::base();
    let args = deployment_serve_args(&m);
    let webhook = m.webhook();
    let timeout = webhook["timeoutSeconds"].as_u64().unwrap();
    assert!((1..=30).contains(&timeout), "the apiserver allows 1-30s");
    // The apiserver passes ?timeout=<timeoutSeconds>s; the budget the server then uses must
    // leave time for the network and the answer, and the configured budget must be what
    // limits reviews (so --review-budget means what it says).
    let apiserver_timeout = Duration::from_secs(timeout);
    let budget = review_budget(args.review_budget, Some(&format!("{timeout}s")));
    assert_eq!(budget, args.review_budget);
    assert!(budget + Duration::from_secs(1) < apiserver_timeout);

    // SIGTERM → shutdown delay (serving, not ready) → drain → exit, well inside the grace period.
    let grace = Duration::from_secs(
        m.pod_spec()["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap(),
    );
    let drain = Config::default().drain_timeout;
    assert!(
        args.shutdown_delay + drain + Duration::from_secs(5) <= grace,
        "terminationGracePeriodSeconds {grace:?} < shutdown delay {:?} + drain {drain:?} + 5s",
        args.shutdown_delay
    );
    assert!(
        args.review_budget <= drain,
        "an in-flight review finishes in the drain"
    );
    // The kubelet sees /readyz fail before the shutdown delay ends.
    let readiness = &m.container()["readinessProbe"];
    let unready_after = readiness["periodSeconds"].as_u64().unwrap()
        * readiness["failureThreshold"].as_u64().unwrap();
    assert!(Duration::from_secs(unready_after) <= args.shutdown_delay);
}

// ---------------------------------------------------------------------------------------------
// The ValidatingWebhookConfiguration

/// Every [`Kind`], chained by an exhaustive match: a new kind does not compile until it is
/// added here, and so to the resources the webhook must be sent.
fn next_kind(kind: Option<Kind>) -> Option<Kind> {
    match kind {
        None => Some(Kind::Pod),
        Some(Kind::Pod) => Some(Kind::Deployment),
        Some(Kind::Deployment) => Some(Kind::ReplicaSet),
        Some(Kind::ReplicaSet) => Some(Kind::StatefulSet),
        Some(Kind::StatefulSet) => Some(Kind::DaemonSet),
        Some(Kind::DaemonSet) => Some(Kind::Job),
        Some(Kind::Job) => Some(Kind::CronJob),
        Some(Kind::CronJob) => Some(Kind::ReplicationController),
        Some(Kind::ReplicationController) => Some(Kind::PodTemplate),
        Some(Kind::PodTemplate) => None,
    }
}

/// The API group, version and resource of a kind.
fn resource_of(kind: Kind) -> (&'static str, &'static str, &'static str) {
    match kind {
        Kind::Pod => ("", "v1", "pods"),
        Kind::Deployment => ("apps", "v1", "deployments"),
        Kind::ReplicaSet => ("apps", "v1", "replicasets"),
        Kind::StatefulSet => ("apps", "v1", "statefulsets"),
        Kind::DaemonSet => ("apps", "v1", "daemonsets"),
        Kind::Job => ("batch", "v1", "jobs"),
        Kind::CronJob => ("batch", "v1", "cronjobs"),
        Kind::ReplicationController => ("", "v1", "replicationcontrollers"),
        Kind::PodTemplate => ("", "v1", "podtemplates"),
    }
}

/// (group, version, resource) → operations, from the webhook's rules.
fn rule_table(webhook: &Value) -> BTreeMap<(String, String, String), BTreeSet<String>> {
    let mut table: BTreeMap<_, BTreeSet<String>> = BTreeMap::new();
    for rule in webhook["rules"].as_array().unwrap() {
        assert_eq!(rule["scope"], "Namespaced");
        for group in str_list(&rule["apiGroups"]) {
            for version in str_list(&rule["apiVersions"]) {
                for resource in str_list(&rule["resources"]) {
                    assert!(
                        !resource.contains('*') && group != "*" && version != "*",
                        "no wildcards: {rule}"
                    );
                    table
                        .entry((group.into(), version.into(), resource.into()))
                        .or_default()
                        .extend(str_list(&rule["operations"]).into_iter().map(str::to_owned));
                }
            }
        }
    }
    table
}

#[test]
fn the_webhook_is_sent_every_kind_the_server_reads_and_nothing_else() {
    let m = Manifests::base();
    let table = rule_table(m.webhook());
    let create_update = BTreeSet::from(["CREATE".to_owned(), "UPDATE".to_owned()]);
    let mut expected = BTreeSet::new();
    let mut kind = next_kind(None);
    while let Some(k) = kind {
        let (group, version, resource) = resource_of(k);
        assert_eq!(
            Kind::from_gvk(&GroupVersionKind::gvk(group, version, k.as_str())),
            Some(k),
            "the server reads {group}/{version} {k}"
        );
        let key = (group.to_owned(), version.to_owned(), resource.to_owned());
        assert_eq!(
            table.get(&key),
            Some(&create_update),
            "{group}/{version} {resource}: CREATE and UPDATE"
        );
        expected.insert(key);
        kind = next_kind(Some(k));
    }
    assert_eq!(expected.len(), 9);
    // `kubectl debug` adds images through this subresource, with UPDATE.
    let ephemeral = (
        "".to_owned(),
        "v1".to_owned(),
        "pods/ephemeralcontainers".to_owned(),
    );
    assert!(table[&ephemeral].contains("UPDATE"));
    expected.insert(ephemeral);
    let sent: BTreeSet<_> = table.keys().cloned().collect();
    assert_eq!(
        sent, expected,
        "every resource sent is one the server reads"
    );
}

#[test]
fn the_webhook_registration_is_safe_to_install() {
    let m = Manifests::base();
    let webhook = m.webhook();
    assert_eq!(webhook["name"], SERVICE_HOST);
    assert_eq!(str_list(&webhook["admissionReviewVersions"]), ["v1"]);
    assert_eq!(
        webhook["sideEffects"], "None",
        "dry-run requests are reviewed"
    );
    assert_eq!(
        webhook["failurePolicy"], "Ignore",
        "see the comment in webhook.yaml"
    );
    assert_eq!(webhook["matchPolicy"], "Equivalent");
    assert!(
        webhook["clientConfig"].get("caBundle").is_none(),
        "re-applying must not wipe the injected caBundle"
    );
    assert!(
        webhook.get("objectSelector").is_none(),
        "pods cannot opt themselves out"
    );

    let selector = &webhook["namespaceSelector"];
    assert!(selector.get("matchLabels").is_none());
    let by_name = selector["matchExpressions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == "kubernetes.io/metadata.name")
        .expect("namespaces excluded by their immutable name label");
    assert_eq!(by_name["operator"], "NotIn");
    let excluded = str_list(&by_name["values"]);
    assert!(excluded.contains(&"kube-system"));
    assert!(excluded.contains(&NAMESPACE));
    let namespace = m.one("Namespace");
    assert_eq!(namespace["metadata"]["name"], NAMESPACE);
    for doc in &m.0 {
        if let Some(ns) = doc["metadata"]["namespace"].as_str() {
            assert_eq!(
                ns, NAMESPACE,
                "{} lives in pullgate's namespace",
                doc["kind"]
            );
        }
    }

    let conditions = webhook["matchConditions"].as_array().unwrap();
    assert!(!conditions.is_empty() && conditions.len() <= 64);
    let names: BTreeSet<&str> = conditions
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names.len(), conditions.len(), "unique names");
    for c in conditions {
        assert!(c["expression"].as_str().is_some_and(|e| !e.is_empty()));
    }
}

// ---------------------------------------------------------------------------------------------
// The Deployment and the image

#[test]
fn the_pod_is_locked_down_spread_and_budgeted() {
    let m = Manifests::base();
    let deployment = m.one("Deployment");
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() >= 2);
    assert_eq!(
        deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        0
    );
    let pod = m.pod_spec();
    let pod_sc = &pod["securityContext"];
    assert_eq!(pod_sc["runAsNonRoot"], true);
    assert_eq!(pod_sc["seccompProfile"]["type"], "RuntimeDefault");
    let container = m.container();
    let sc = &container["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(str_list(&sc["capabilities"]["drop"]), ["ALL"]);
    assert!(sc["capabilities"].get("add").is_none());
    for key in ["privileged", "runAsUser"] {
        assert!(sc.get(key).is_none(), "{key} is set once, on the pod");
    }
    for key in ["hostNetwork", "hostPID", "hostIPC"] {
        assert!(pod.get(key).is_none());
    }
    let requests = &container["resources"]["requests"];
    assert!(requests["cpu"].is_string() && requests["memory"].is_string());
    assert!(container["resources"]["limits"]["memory"].is_string());

    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let spread = pod["topologySpreadConstraints"].as_array().unwrap();
    let keys: BTreeSet<&str> = spread
        .iter()
        .filter_map(|s| s["topologyKey"].as_str())
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["kubernetes.io/hostname", "topology.kubernetes.io/zone"])
    );
    for s in spread {
        for (k, v) in s["labelSelector"]["matchLabels"].as_object().unwrap() {
            assert_eq!(&labels[k], v);
        }
    }
    let pdb = m.one("PodDisruptionBudget");
    for (k, v) in pdb["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&labels[k], v, "the PodDisruptionBudget selects the pods");
    }
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(
        m.one("Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
}

#[test]
fn the_dockerfile_builds_locked_and_runs_as_the_deployments_user() {
    let dockerfile = read("Dockerfile");
    let instructions: Vec<&str> = dockerfile
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    let from: Vec<&str> = instructions
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .copied()
        .collect();
    assert_eq!(from.len(), 2, "a build stage and a runtime stage");
    assert!(from[1].contains("distroless"), "{}", from[1]);
    assert!(dockerfile.contains("cargo build --release --locked"));

    let m = Manifests::base();
    let uid = m.pod_spec()["securityContext"]["runAsUser"]
        .as_u64()
        .unwrap();
    let gid = m.pod_spec()["securityContext"]["runAsGroup"]
        .as_u64()
        .unwrap();
    assert_eq!(uid, 65532);
    let user: Vec<&str> = instructions
        .iter()
        .filter_map(|l| l.strip_prefix("USER "))
        .collect();
    assert_eq!(user, [format!("{uid}:{gid}")]);

    let args = deployment_serve_args(&m);
    let exposed: BTreeSet<u16> = instructions
        .iter()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(|ports| ports.split_whitespace().map(|p| p.parse::<u16>().unwrap()))
        .collect();
    assert_eq!(
        exposed,
        BTreeSet::from([args.listen.port(), args.admin_listen.port()])
    );
    assert!(instructions.contains(&r#"ENTRYPOINT ["/usr/local/bin/pullgate"]"#));
    assert!(instructions.contains(&r#"CMD ["serve"]"#));

    let ignore = read(".dockerignore");
    assert!(
        ignore.lines().any(|l| l == "*"),
        "the build context is an allow-list"
    );
}

/// The build stage's COPY sources, each allowed by .dockerignore, make a tree cargo accepts:
/// a target declared in Cargo.toml but left out of the context breaks `docker build`. (No
/// Docker engine runs here; cargo parses the manifest of a copy of exactly that context.)
#[test]
fn the_docker_build_context_holds_everything_cargo_needs() {
    let allowed: Vec<String> = read(".dockerignore")
        .lines()
        .filter_map(|l| l.strip_prefix('!'))
        .map(|l| l.trim_end_matches('/').to_owned())
        .collect();
    let dockerfile = read("Dockerfile");
    let build_stage = dockerfile.split("\nFROM ").nth(1).expect("a build stage");
    let sources: Vec<&str> = build_stage
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--"))
        .flat_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words[..words.len() - 1].to_vec()
        })
        .collect();
    for required in ["Cargo.toml", "Cargo.lock", "src"] {
        assert!(sources.contains(&required), "the build copies {required}");
    }
    let context = TempDir::new().unwrap();
    for source in &sources {
        assert!(
            allowed.iter().any(|a| a == source),
            "{source} is copied but .dockerignore keeps it out of the context"
        );
        copy_tree(&root().join(source), &context.path().join(source));
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["fetch", "--offline", "--locked"])
        .current_dir(context.path())
        .env("CARGO_TARGET_DIR", context.path().join("target"))
        .output()
        .unwrap();
    // Offline, fetching may fail for want of the network; the manifest must parse and the lock
    // file must be current all the same.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("failed to parse manifest") && !stderr.contains("needs to be updated"),
        "cargo rejects the Docker build context: {stderr}"
    );
}

fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        std::fs::copy(from, to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    }
}

/// The image the Deployment runs: the one the release workflow publishes (ghcr.io/OWNER/REPO,
/// with ghcr.io/pullgate/pullgate standing for it), tagged with this crate's version in the one
/// `images:` entry the workflow rewrites to a digest.
const PUBLISHED_IMAGE: &str = "ghcr.io/pullgate/pullgate";

#[test]
fn the_deployment_runs_the_published_image_at_the_crates_version() {
    let m = Manifests::base();
    assert_eq!(
        m.container()["image"],
        PUBLISHED_IMAGE,
        "the tag (or digest) is set by kustomization.yaml's images:"
    );
    let k = &yaml_docs("deploy/base/kustomization.yaml")[0];
    assert_eq!(
        k["images"],
        serde_json::json!([{"name": PUBLISHED_IMAGE, "newTag": env!("CARGO_PKG_VERSION")}]),
        "one entry, tagged with Cargo.toml's version: the release workflow replaces its newTag line"
    );
    // The line the release workflow's sed replaces, exactly once.
    let text = read("deploy/base/kustomization.yaml");
    let tag_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("    newTag: "))
        .collect();
    assert_eq!(
        tag_lines,
        [format!("    newTag: {}", env!("CARGO_PKG_VERSION"))]
    );
}

/// One step of a workflow job, found by the action it uses.
fn workflow_step<'a>(job: &'a Value, action: &str) -> &'a Value {
    job["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| {
            s["uses"]
                .as_str()
                .is_some_and(|u| u.split('@').next() == Some(action))
        })
        .unwrap_or_else(|| panic!("no step uses {action}"))
}

/// The release workflow (linted by actionlint in tests/run): on a version tag, a multi-arch
/// image with provenance and an SBOM, pushed to the forge's registry, then pinned by digest
/// where deploy/ names the image, with permissions that allow exactly that.
#[test]
fn the_release_workflow_publishes_an_attested_multi_arch_image_and_pins_it() {
    let workflow = &yaml_docs(".github/workflows/release.yml")[0];
    assert_eq!(str_list(&workflow["on"]["push"]["tags"]), ["v*"]);
    assert_eq!(
        workflow["permissions"],
        serde_json::json!({}),
        "nothing by default"
    );
    let jobs = workflow["jobs"].as_object().unwrap();
    assert_eq!(jobs.len(), 1);
    let job = jobs.values().next().unwrap();
    let permissions: BTreeMap<&str, &str> = job["permissions"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
        .collect();
    assert_eq!(
        permissions,
        BTreeMap::from([
            ("attestations", "write"),
            ("contents", "write"),
            ("id-token", "write"),
            ("packages", "write"),
        ])
    );
    let build = &workflow_step(job, "docker/build-push-action")["with"];
    let platforms: BTreeSet<&str> = build["platforms"].as_str().unwrap().split(',').collect();
    assert_eq!(platforms, BTreeSet::from(["linux/amd64", "linux/arm64"]));
    assert_eq!(build["provenance"], "mode=max");
    assert_eq!(build["sbom"], true);
    assert_eq!(build["push"], true);
    assert_eq!(
        workflow_step(job, "docker/login-action")["with"]["registry"],
        "ghcr.io"
    );
    assert_eq!(
        workflow_step(job, "docker/metadata-action")["with"]["flavor"],
        "latest=false",
        "versions only: docs/image.md says there is no `latest`"
    );
    for action in ["docker/setup-qemu-action", "docker/setup-buildx-action"] {
        workflow_step(job, action);
    }
    let attest = &workflow_step(job, "actions/attest-build-provenance")["with"];
    assert_eq!(
        attest["subject-digest"],
        "${{ steps.build.outputs.digest }}"
    );
    // The pin: the kustomization's newTag line becomes the built image's digest.
    let run: String = job["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["run"].as_str())
        .collect();
    assert!(
        run.contains("s|^    newTag: .*|") && run.contains("deploy/base/kustomization.yaml"),
        "{run}"
    );
    assert!(run.contains("kubectl kustomize deploy >dist/install.yaml"));
    // Every action is pinned at least to a major version.
    for step in job["steps"].as_array().unwrap() {
        if let Some(uses) = step["uses"].as_str() {
            let (_, version) = uses.split_once('@').expect("a pinned version");
            assert!(version.starts_with('v') || version.len() == 40, "{uses}");
        }
    }
}

/// The release builds linux/amd64 and linux/arm64 at once: BuildKit shares a cache mount
/// between platforms unless its id differs, so each cache mount of the build names the
/// platform (the two builds would otherwise write one target directory together).
#[test]
fn the_dockerfiles_cache_mounts_are_per_platform() {
    let dockerfile = read("Dockerfile");
    let mounts: Vec<&str> = dockerfile
        .split_whitespace()
        .filter(|w| w.starts_with("--mount=type=cache"))
        .collect();
    assert!(!mounts.is_empty());
    for mount in mounts {
        let options: BTreeMap<&str, &str> = mount["--mount=".len()..]
            .split(',')
            .filter_map(|o| o.split_once('='))
            .collect();
        assert!(
            options
                .get("id")
                .is_some_and(|id| id.contains("${TARGETPLATFORM}")),
            "{mount}"
        );
        assert_eq!(options.get("sharing"), Some(&"locked"), "{mount}");
    }
    let build_stage = dockerfile.split("\nFROM ").nth(1).unwrap();
    assert!(build_stage.contains("\nARG TARGETPLATFORM\n"));
}

// ---------------------------------------------------------------------------------------------
// Overlays

#[test]
fn the_cert_manager_overlay_issues_the_secret_the_deployment_mounts() {
    let m = Manifests::base();
    let args = deployment_serve_args(&m);
    let cert_path = args.tls_cert.expect("the Deployment names a certificate");
    let key_path = args.tls_key.expect("and its key");
    let (volume, cert_file) = mounted(&m, &cert_path);
    let (key_volume, key_file) = mounted(&m, &key_path);
    assert_eq!(volume, key_volume);
    // The keys of a kubernetes.io/tls Secret, which both cert-manager and make-certs.sh write.
    assert_eq!(
        (cert_file.as_str(), key_file.as_str()),
        ("tls.crt", "tls.key")
    );
    let secret = volume["secret"]["secretName"].as_str().unwrap();

    let k = &yaml_docs("deploy/cert-manager/kustomization.yaml")[0];
    let resources = str_list(&k["resources"]);
    assert!(resources.contains(&"../base"));
    let docs: Vec<Value> = resources
        .iter()
        .filter(|r| r.ends_with(".yaml"))
        .flat_map(|r| yaml_docs(Path::new("deploy/cert-manager").join(r)))
        .collect();
    let find = |kind: &str, name: &str| -> &Value {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    for d in &docs {
        assert_eq!(d["apiVersion"], "cert-manager.io/v1");
        assert_eq!(d["metadata"]["namespace"], NAMESPACE);
    }
    let serving = docs
        .iter()
        .find(|d| d["kind"] == "Certificate" && d["spec"]["secretName"] == secret)
        .expect("a Certificate for the mounted Secret");
    let dns: BTreeSet<&str> = str_list(&serving["spec"]["dnsNames"]).into_iter().collect();
    assert_eq!(dns, BTreeSet::from(SANS));
    assert!(serving["spec"].get("isCA").is_none());
    // serving ← CA Issuer ← CA Certificate ← self-signed Issuer.
    let ca_issuer = find(
        "Issuer",
        serving["spec"]["issuerRef"]["name"].as_str().unwrap(),
    );
    let ca_secret = ca_issuer["spec"]["ca"]["secretName"].as_str().unwrap();
    let ca_cert = docs
        .iter()
        .find(|d| d["kind"] == "Certificate" && d["spec"]["secretName"] == ca_secret)
        .expect("a CA Certificate");
    assert_eq!(ca_cert["spec"]["isCA"], true);
    let root_issuer = find(
        "Issuer",
        ca_cert["spec"]["issuerRef"]["name"].as_str().unwrap(),
    );
    assert!(root_issuer["spec"]["selfSigned"].is_object());

    // The CA injector fills caBundle from the serving Certificate.
    let patch = k["patches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["target"]["kind"] == "ValidatingWebhookConfiguration")
        .expect("a patch of the webhook configuration");
    assert_eq!(
        patch["target"]["name"],
        m.one("ValidatingWebhookConfiguration")["metadata"]["name"]
    );
    let ops: Vec<Value> = serde_saphyr::from_str(patch["patch"].as_str().unwrap()).unwrap();
    let annotation = &ops[0]["value"]["cert-manager.io/inject-ca-from"];
    assert_eq!(
        annotation,
        &format!(
            "{NAMESPACE}/{}",
            serving["metadata"]["name"].as_str().unwrap()
        )
    );
}

/// The JSON-patch operations of an example overlay's one patch.
fn patch_ops(kustomization: &Value) -> Vec<Value> {
    serde_saphyr::from_str(kustomization["patches"][0]["patch"].as_str().unwrap()).unwrap()
}

/// The value of the operation whose path ends with `suffix`.
fn op_value<'a>(ops: &'a [Value], suffix: &str) -> &'a Value {
    &ops.iter()
        .find(|op| op["path"].as_str().unwrap().ends_with(suffix))
        .unwrap()["value"]
}

#[test]
fn the_node_credentials_example_mounts_a_docker_config_where_pullgate_reads_it() {
    let k = &yaml_docs("deploy/examples/node-credentials/kustomization.yaml")[0];
    let ops = patch_ops(k);
    let value = |suffix: &str| op_value(&ops, suffix);
    let env = value("/env/-");
    assert_eq!(env["name"], "PULLGATE_DOCKER_CONFIG");
    let args = serve_args(&[
        "pullgate",
        "serve",
        "--docker-config",
        env["value"].as_str().unwrap(),
    ]);
    let file = &args.registry.docker_configs[0];
    let mount = value("/volumeMounts/-");
    assert_eq!(
        Path::new(mount["mountPath"].as_str().unwrap()),
        file.parent().unwrap()
    );
    let volume = value("/volumes/-");
    assert_eq!(volume["name"], mount["name"]);
    let item = &volume["secret"]["items"][0];
    assert_eq!(item["key"], ".dockerconfigjson");
    assert_eq!(
        Path::new(item["path"].as_str().unwrap()),
        file.file_name().unwrap()
    );
}

/// The node-hosts example: every hosts.toml under its certs.d/ is in the ConfigMap and mounted
/// at the path it has on the nodes, where `PULLGATE_HOSTS_DIR` points, and the directory loads
/// as pullgate reads it.
#[test]
fn the_node_hosts_example_mounts_every_hosts_toml_where_the_nodes_have_it() {
    let dir = root().join("deploy/examples/node-hosts");
    let k = &yaml_docs("deploy/examples/node-hosts/kustomization.yaml")[0];
    let ops = patch_ops(k);
    let value = |suffix: &str| op_value(&ops, suffix);
    let env = value("/env/-");
    assert_eq!(env["name"], "PULLGATE_HOSTS_DIR");
    let args = serve_args(&[
        "pullgate",
        "serve",
        "--hosts-dir",
        env["value"].as_str().unwrap(),
    ]);
    let mount = value("/volumeMounts/-");
    assert_eq!(
        Path::new(mount["mountPath"].as_str().unwrap()),
        args.registry.hosts_dir.as_deref().unwrap()
    );
    let volume = value("/volumes/-");
    assert_eq!(volume["name"], mount["name"]);
    let generator = &k["configMapGenerator"][0];
    assert_eq!(volume["configMap"]["name"], generator["name"]);
    // key=file in the generator; key -> path in the volume: the file lands at its path.
    let files: BTreeMap<&str, &str> = str_list(&generator["files"])
        .into_iter()
        .map(|f| f.split_once('=').unwrap())
        .collect();
    let mounted = tempfile::tempdir().unwrap();
    let mut on_disk = BTreeSet::new();
    for item in volume["configMap"]["items"].as_array().unwrap() {
        let key = item["key"].as_str().unwrap();
        let path = item["path"].as_str().unwrap();
        let source = files[key];
        assert_eq!(
            source,
            format!("certs.d/{path}"),
            "{key} lands where the nodes have it"
        );
        on_disk.insert(source.to_owned());
        let target = mounted.path().join(path);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(dir.join(source), target).unwrap();
    }
    let mut listed = BTreeSet::new();
    for host in std::fs::read_dir(dir.join("certs.d")).unwrap() {
        let host = host.unwrap().file_name().into_string().unwrap();
        listed.insert(format!("certs.d/{host}/hosts.toml"));
    }
    assert_eq!(on_disk, listed, "every hosts.toml of certs.d/ is mounted");
    let loaded = pullgate::registry::NodeHosts::load_hosts_dir(mounted.path()).unwrap();
    assert!(loaded.describe().contains("containerd hosts directory"));
}

/// The EKS example: the plugin copied into a directory pullgate reads as its bin dir, the
/// kubelet's config mounted where `PULLGATE_IMAGE_CREDENTIAL_PROVIDER_CONFIG` points, and that
/// config loads as pullgate (and the kubelet) validate it.
#[test]
fn the_eks_example_gives_pullgate_the_plugin_and_the_kubelets_config() {
    let dir = root().join("deploy/examples/eks-credential-provider");
    let k = &yaml_docs("deploy/examples/eks-credential-provider/kustomization.yaml")[0];
    let ops: Vec<Value> =
        serde_saphyr::from_str(k["patches"][1]["patch"].as_str().unwrap()).unwrap();
    let envs: BTreeMap<&str, &str> = ops
        .iter()
        .filter(|op| op["path"].as_str().unwrap().ends_with("/env/-"))
        .map(|op| {
            (
                op["value"]["name"].as_str().unwrap(),
                op["value"]["value"].as_str().unwrap(),
            )
        })
        .collect();
    let config = Path::new(envs["PULLGATE_IMAGE_CREDENTIAL_PROVIDER_CONFIG"]);
    let bin_dir = Path::new(envs["PULLGATE_IMAGE_CREDENTIAL_PROVIDER_BIN_DIR"]);
    let args = serve_args(&[
        "pullgate",
        "serve",
        "--image-credential-provider-config",
        config.to_str().unwrap(),
        "--image-credential-provider-bin-dir",
        bin_dir.to_str().unwrap(),
    ]);
    assert_eq!(
        args.registry.credential_provider_config.as_deref(),
        Some(config)
    );
    let mounts: BTreeMap<&str, &str> = ops
        .iter()
        .filter(|op| op["path"].as_str().unwrap().ends_with("/volumeMounts/-"))
        .map(|op| {
            (
                op["value"]["mountPath"].as_str().unwrap(),
                op["value"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    let config_volume = mounts[config.parent().unwrap().to_str().unwrap()];
    let bin_volume = mounts[bin_dir.to_str().unwrap()];
    // The init container copies the plugin into the bin dir's volume, under the provider's name.
    let init = &ops
        .iter()
        .find(|op| op["path"] == "/spec/template/spec/initContainers")
        .unwrap()["value"][0];
    assert_eq!(init["volumeMounts"][0]["name"], bin_volume);
    let copied_to = init["command"].as_array().unwrap().last().unwrap();
    let provider_config =
        std::fs::read_to_string(dir.join("credential-provider-config.yaml")).unwrap();
    let provider: Value = serde_saphyr::from_str(&provider_config).unwrap();
    let name = provider["providers"][0]["name"].as_str().unwrap();
    assert_eq!(
        copied_to.as_str().unwrap(),
        format!(
            "{}/{name}",
            init["volumeMounts"][0]["mountPath"].as_str().unwrap()
        )
    );
    // The ConfigMap's key is the file name pullgate is pointed at.
    let generator = &k["configMapGenerator"][0];
    let volume = ops
        .iter()
        .find(|op| {
            op["value"]["name"] == config_volume
                && op["path"].as_str().unwrap().ends_with("/volumes/-")
        })
        .unwrap();
    assert_eq!(volume["value"]["configMap"]["name"], generator["name"]);
    let key = str_list(&generator["files"])[0].split_once('=').unwrap().0;
    assert_eq!(key, config.file_name().unwrap().to_str().unwrap());
    // The config is valid, with the plugin it names present and executable.
    let plugins = tempfile::tempdir().unwrap();
    let plugin = plugins.path().join(name);
    std::fs::write(&plugin, "#!/usr/bin/env python3\n").unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    pullgate::credentials::CredentialProviders::load(
        &dir.join("credential-provider-config.yaml"),
        plugins.path(),
    )
    .unwrap();
}

/// The component for credential providers with `tokenAttributes`: it turns on the serve flag
/// through its environment variable, and grants that flag's one extra right, `create` on
/// `serviceaccounts/token`, in a ClusterRole of its own.
#[test]
fn the_provider_tokens_component_turns_the_flag_on_with_its_one_right() {
    let rel = "deploy/examples/provider-service-account-tokens";
    let k = &yaml_docs(format!("{rel}/kustomization.yaml"))[0];
    assert_eq!(k["kind"], "Component");
    let ops: Vec<Value> =
        serde_saphyr::from_str(k["patches"][0]["patch"].as_str().unwrap()).unwrap();
    let env = &ops[0]["value"];
    let cli = Cli::command();
    let serve = cli.find_subcommand("serve").unwrap();
    let flag = serve
        .get_arguments()
        .find(|a| {
            a.get_env()
                .is_some_and(|e| e == env["name"].as_str().unwrap())
        })
        .expect("the variable is a serve flag's");
    assert_eq!(flag.get_long(), Some("provider-service-account-tokens"));
    assert_eq!(env["value"], "true");
    let args = serve_args(&["pullgate", "serve", "--provider-service-account-tokens"]);
    assert!(args.provider_service_account_tokens);

    let rbac = yaml_docs(format!("{rel}/rbac.yaml"));
    let role = rbac.iter().find(|d| d["kind"] == "ClusterRole").unwrap();
    assert_eq!(
        role["rules"],
        serde_json::json!([{"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]}])
    );
    let binding = rbac
        .iter()
        .find(|d| d["kind"] == "ClusterRoleBinding")
        .unwrap();
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(binding["subjects"][0]["name"], "pullgate");
    assert_eq!(binding["subjects"][0]["namespace"], "pullgate");
}

// ---------------------------------------------------------------------------------------------
// Monitoring

/// deploy/monitoring's objects, as its kustomization lists them.
fn monitoring() -> Vec<Value> {
    let k = &yaml_docs("deploy/monitoring/kustomization.yaml")[0];
    assert_eq!(
        k["kind"], "Kustomization",
        "applied on its own, with any install"
    );
    str_list(&k["resources"])
        .into_iter()
        .flat_map(|file| yaml_docs(Path::new("deploy/monitoring").join(file)))
        .collect()
}

fn one_of<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let all: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(all.len(), 1, "exactly one {kind}");
    all[0]
}

/// The ServiceMonitor scrapes /metrics on the admin listener, through the Service's port for
/// it, in pullgate's namespace, where the NetworkPolicy lets the monitoring namespace in.
#[test]
fn the_service_monitor_scrapes_metrics_on_the_admin_port() {
    let m = Manifests::base();
    let args = deployment_serve_args(&m);
    let docs = monitoring();
    for d in &docs {
        assert_eq!(d["apiVersion"], "monitoring.coreos.com/v1");
        assert_eq!(d["metadata"]["namespace"], NAMESPACE);
    }
    let monitor = one_of(&docs, "ServiceMonitor");
    let service = m.one("Service");
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(
            &service["metadata"]["labels"][k], v,
            "the ServiceMonitor selects the Service"
        );
    }
    assert!(
        monitor["spec"].get("namespaceSelector").is_none(),
        "the Service is in the ServiceMonitor's namespace"
    );
    let endpoints = monitor["spec"]["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 1);
    let endpoint = &endpoints[0];
    assert_eq!(endpoint["path"], METRICS_PATH);
    assert_eq!(endpoint["scheme"], "http", "the admin port is plain HTTP");
    let service_port = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == endpoint["port"])
        .expect("the endpoint names a port of the Service");
    let container_port = m.container()["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == service_port["targetPort"])
        .unwrap();
    assert_eq!(
        container_port["containerPort"].as_u64(),
        Some(u64::from(args.admin_listen.port())),
        "the Service's port leads to the admin listener"
    );
}

/// A label matcher of a PromQL selector: label, operator (`=`, `!=`, `=~`, `!~`), value.
type Matcher = (String, String, String);

/// Each `name{label op "value", …}` selector of a PromQL expression: the metric, and its
/// matchers.
fn selectors(expr: &str) -> Vec<(String, Vec<Matcher>)> {
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(open) = rest.find('{') {
        let before = &rest[..open];
        let name: String = before
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let close = rest[open..].find('}').unwrap() + open;
        let mut matchers = Vec::new();
        for part in rest[open + 1..close].split(',') {
            let part = part.trim();
            let op_at = part.find(['=', '!']).unwrap();
            let label = part[..op_at].trim().to_owned();
            let after = &part[op_at..];
            let op_len =
                if after.starts_with("=~") || after.starts_with("!~") || after.starts_with("!=") {
                    2
                } else {
                    1
                };
            let value = after[op_len..].trim().trim_matches('"').to_owned();
            matchers.push((label, after[..op_len].to_owned(), value));
        }
        found.push((name, matchers));
        rest = &rest[close + 1..];
    }
    found
}

/// pullgate's exposition with every decision and verdict counted once: sample name → the
/// label sets of its samples.
fn exposition() -> BTreeMap<String, Vec<BTreeMap<String, String>>> {
    use pullgate::policy::DecisionKind;
    use pullgate::probe::Verdict;
    let metrics = Arc::new(pullgate::metrics::Metrics::new());
    for decision in [
        DecisionKind::Allow,
        DecisionKind::Warn,
        DecisionKind::Deny,
        DecisionKind::Exempt,
    ] {
        metrics.review("Pod", decision.as_str(), Duration::from_millis(3));
    }
    // An unreadable request (src/server/routes.rs).
    metrics.review("unknown", "error", Duration::from_millis(1));
    for verdict in [
        Verdict::Pullable,
        Verdict::Blocked,
        Verdict::Unauthorized,
        Verdict::NotFound,
        Verdict::Unavailable,
        Verdict::Invalid,
    ] {
        metrics.probe(verdict.as_str());
    }
    metrics.request_observer()("registry.example.com", Some(503));
    metrics.request_observer()("registry.example.com", None);
    let mut samples: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    for line in metrics.encode().lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (name, labels) = match line.split_once('{') {
            Some((name, rest)) => (name, rest.split_once('}').unwrap().0),
            None => (line.split_whitespace().next().unwrap(), ""),
        };
        let labels = labels
            .split("\",")
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap();
                (k.to_owned(), v.trim_matches('"').to_owned())
            })
            .collect();
        samples.entry(name.to_owned()).or_default().push(labels);
    }
    samples
}

/// The alert rules name only series that exist: pullgate's metrics with labels and values it
/// exports (and the target labels the ServiceMonitor gives them), `up` of the ServiceMonitor's
/// job, and the API server's fail-open count of pullgate's webhook. A renamed metric or label
/// would leave an alert that can never fire. Each alert has its section in docs/monitoring.md.
#[test]
fn the_alert_rules_name_only_series_that_exist() {
    let m = Manifests::base();
    let service = m.one("Service");
    let job = service["metadata"]["name"].as_str().unwrap();
    let webhook = m.webhook()["name"].as_str().unwrap();
    let samples = exposition();
    let docs = monitoring();
    let rule = one_of(&docs, "PrometheusRule");
    let guide = read("docs/monitoring.md");
    let mut alerts = BTreeSet::new();
    let mut used = BTreeSet::new();
    for group in rule["spec"]["groups"].as_array().unwrap() {
        for r in group["rules"].as_array().unwrap() {
            let alert = r["alert"].as_str().expect("alerting rules only");
            assert!(alerts.insert(alert), "{alert} twice");
            assert!(
                guide.contains(&format!("### {alert}")),
                "docs/monitoring.md has no section {alert}"
            );
            assert!(r["labels"]["severity"].is_string(), "{alert}");
            let expr = r["expr"].as_str().unwrap();
            let found = selectors(expr);
            assert!(!found.is_empty(), "{alert}: {expr}");
            for (name, matchers) in found {
                let labels = |l: &str| -> BTreeMap<&str, (&str, &str)> {
                    matchers
                        .iter()
                        .filter(|(k, _, _)| k == l)
                        .map(|(k, op, v)| (k.as_str(), (op.as_str(), v.as_str())))
                        .collect()
                };
                if name == "up" || name.starts_with("pullgate_") {
                    assert_eq!(
                        labels("job").get("job"),
                        Some(&("=", job)),
                        "{alert}: {name} of the ServiceMonitor's job (the Service's name)"
                    );
                    assert_eq!(
                        labels("namespace").get("namespace"),
                        Some(&("=", NAMESPACE)),
                        "{alert}: {name}"
                    );
                }
                if name == "up" {
                    continue;
                }
                if name == "apiserver_admission_webhook_fail_open_count" {
                    assert_eq!(
                        labels("name").get("name"),
                        Some(&("=", webhook)),
                        "{alert}: the API server counts fail-opens by webhook name"
                    );
                    continue;
                }
                assert!(
                    name.starts_with("pullgate_"),
                    "{alert}: {name} is neither pullgate's nor one the alerts know"
                );
                let exported = samples.get(&name).unwrap_or_else(|| {
                    panic!(
                        "{alert}: pullgate exports no {name}; it has {:?}",
                        samples.keys().collect::<Vec<_>>()
                    )
                });
                used.insert(name.clone());
                for (label, op, value) in &matchers {
                    if label == "job" || label == "namespace" {
                        continue;
                    }
                    assert!(
                        exported.iter().any(|s| s.contains_key(label)),
                        "{alert}: {name} has no label {label}"
                    );
                    if op == "=" || op == "!=" {
                        assert!(
                            exported.iter().any(|s| s[label] == *value),
                            "{alert}: {name} never has {label}=\"{value}\""
                        );
                    }
                }
            }
        }
    }
    assert_eq!(
        alerts,
        BTreeSet::from([
            "PullgateDenyingManyWorkloads",
            "PullgateDown",
            "PullgateFailingOpen",
            "PullgateRegistriesUnavailable",
            "PullgateReviewsSlow",
        ])
    );
    assert_eq!(
        used,
        BTreeSet::from([
            "pullgate_probes_total".to_owned(),
            "pullgate_review_duration_seconds_bucket".to_owned(),
            "pullgate_reviews_total".to_owned(),
        ])
    );
}

// ---------------------------------------------------------------------------------------------
// certs/make-certs.sh

fn make_certs(args: &[&str]) -> Output {
    let out = Command::new("bash")
        .arg(root().join("certs/make-certs.sh"))
        .args(args)
        .env_remove("KUBECTL")
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "make-certs.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed (tests/run installs it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn ok_openssl(args: &[&str]) -> String {
    let (ok, text) = openssl(args);
    assert!(ok, "openssl {args:?}: {text}");
    text
}

/// The certificate script's output for the `pullgate` namespace, in a fresh directory.
fn script_certs() -> (TempDir, PathBuf) {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("out");
    make_certs(&["--out", out.to_str().unwrap()]);
    (dir, out)
}

fn dns_names(cert: &Path) -> BTreeSet<String> {
    let text = ok_openssl(&[
        "x509",
        "-in",
        cert.to_str().unwrap(),
        "-noout",
        "-ext",
        "subjectAltName",
    ]);
    text.split([',', '\n'])
        .filter_map(|part| part.trim().strip_prefix("DNS:"))
        .map(str::to_owned)
        .collect()
}

fn expires_within(cert: &Path, days: u64) -> bool {
    let (valid_then, _) = openssl(&[
        "x509",
        "-in",
        cert.to_str().unwrap(),
        "-noout",
        "-checkend",
        &(days * 86_400).to_string(),
    ]);
    !valid_then
}

#[test]
fn the_certs_script_makes_a_chain_openssl_verifies() {
    let (_dir, out) = script_certs();
    let p = |name: &str| out.join(name).to_str().unwrap().to_owned();
    let (ca, cert, key) = (p("ca.crt"), p("tls.crt"), p("tls.key"));

    let verified = ok_openssl(&["verify", "-purpose", "sslserver", "-CAfile", &ca, &cert]);
    assert!(verified.contains(": OK"), "{verified}");
    assert_eq!(
        dns_names(Path::new(&cert)),
        SANS.iter().map(|s| s.to_string()).collect()
    );
    let subject = ok_openssl(&["x509", "-in", &cert, "-noout", "-subject"]);
    assert!(
        subject.contains(&format!("CN = {SERVICE_HOST}")),
        "{subject}"
    );
    let leaf_ext = ok_openssl(&[
        "x509",
        "-in",
        &cert,
        "-noout",
        "-ext",
        "basicConstraints,extendedKeyUsage",
    ]);
    assert!(leaf_ext.contains("CA:FALSE") && leaf_ext.contains("TLS Web Server Authentication"));
    let ca_ext = ok_openssl(&[
        "x509",
        "-in",
        &ca,
        "-noout",
        "-ext",
        "basicConstraints,keyUsage",
    ]);
    assert!(
        ca_ext.contains("CA:TRUE") && ca_ext.contains("Certificate Sign"),
        "{ca_ext}"
    );

    // The key belongs to the certificate.
    assert_eq!(
        ok_openssl(&["pkey", "-in", &key, "-pubout"]),
        ok_openssl(&["x509", "-in", &cert, "-noout", "-pubkey"])
    );
    // One year for the serving certificate, five for the CA.
    assert!(!expires_within(Path::new(&cert), 364) && expires_within(Path::new(&cert), 366));
    assert!(!expires_within(Path::new(&ca), 1824) && expires_within(Path::new(&ca), 1826));

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for private in [&key, &ca.replace("ca.crt", "ca.key")] {
            let mode = std::fs::metadata(private).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{private} is readable by its owner only");
        }
    }

    // Running it again renews the serving certificate under the same CA, so caBundle stays.
    let ca_before = std::fs::read(&ca).unwrap();
    let cert_before = std::fs::read(&cert).unwrap();
    make_certs(&["--out", out.to_str().unwrap()]);
    assert_eq!(std::fs::read(&ca).unwrap(), ca_before);
    assert_ne!(std::fs::read(&cert).unwrap(), cert_before);
    ok_openssl(&["verify", "-CAfile", &ca, &cert]);
    make_certs(&[
        "--out",
        out.to_str().unwrap(),
        "--new-ca",
        "--namespace",
        "team-a",
    ]);
    assert_ne!(std::fs::read(&ca).unwrap(), ca_before);
    ok_openssl(&["verify", "-CAfile", &ca, &cert]);
    assert!(dns_names(Path::new(&cert)).contains("pullgate.team-a.svc.cluster.local"));
}

#[test]
fn the_certs_script_installs_the_secret_and_the_ca_bundle_with_kubectl() {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("out");
    let log = dir.path().join("kubectl.log");
    let m = Manifests::base();
    let webhooks = m.one("ValidatingWebhookConfiguration")["webhooks"]
        .as_array()
        .unwrap()
        .len();
    // A stand-in for kubectl that logs its arguments (one a line) and what it is piped.
    let fake = dir.path().join("kubectl");
    std::fs::write(
        &fake,
        format!(
            r#"#!/usr/bin/env bash
log='{log}'
# One append per call: the two ends of a pipe run at the same time.
entry="$(printf '%s\n' "$@")"
case "$*" in
  "apply -f -") entry+=$'\n'"$(sed 's/^/stdin: /')" ;;
esac
printf '%s\n=== end ===\n' "$entry" >> "$log"
case "$*" in
  *"create secret"*) echo "kind: Secret" ;;
  "get validatingwebhookconfiguration"*) printf '{xs}' ;;
esac
"#,
            log = log.display(),
            xs = "x".repeat(webhooks)
        ),
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let run = Command::new("bash")
        .arg(root().join("certs/make-certs.sh"))
        .args(["--apply", "--out", out.to_str().unwrap()])
        .env("KUBECTL", &fake)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    let text = std::fs::read_to_string(&log).unwrap();
    let calls: Vec<Vec<&str>> = text
        .split("=== end ===\n")
        .filter(|c| !c.is_empty())
        .map(|c| c.lines().collect())
        .collect();
    let secret_name = m.pod_spec()["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|v| v["secret"]["secretName"].as_str())
        .unwrap();
    let create = calls
        .iter()
        .find(|c| c.contains(&"create"))
        .expect("a secret is created");
    for expected in [
        "-n",
        NAMESPACE,
        "secret",
        secret_name,
        "--type=kubernetes.io/tls",
        "--dry-run=client",
    ] {
        assert!(create.contains(&expected), "{expected} in {create:?}");
    }
    for file in ["tls.crt", "tls.key", "ca.crt"] {
        let arg = format!("--from-file={file}={}", out.join(file).display());
        assert!(create.contains(&arg.as_str()), "{arg} in {create:?}");
    }
    assert!(
        calls
            .iter()
            .any(|c| c.starts_with(&["apply", "-f", "-", "stdin: kind: Secret"])),
        "the rendered Secret is applied: {calls:?}"
    );
    let patch = calls
        .iter()
        .find(|c| c.first() == Some(&"patch"))
        .expect("the webhook configuration is patched");
    let name = m.one("ValidatingWebhookConfiguration")["metadata"]["name"]
        .as_str()
        .unwrap();
    assert_eq!(
        patch[..4],
        [
            "patch",
            "validatingwebhookconfiguration",
            name,
            "--type=json"
        ]
    );
    let ops: Value = serde_json::from_str(patch[5]).unwrap();
    let ops = ops.as_array().unwrap();
    assert_eq!(ops.len(), webhooks);
    let ca = std::fs::read(out.join("ca.crt")).unwrap();
    for (i, op) in ops.iter().enumerate() {
        assert_eq!(op["op"], "add");
        assert_eq!(op["path"], format!("/webhooks/{i}/clientConfig/caBundle"));
        let bundle = base64::engine::general_purpose::STANDARD
            .decode(op["value"].as_str().unwrap())
            .unwrap();
        assert_eq!(bundle, ca, "caBundle is the CA, base64");
    }
}

// ---------------------------------------------------------------------------------------------
// The server on the script's certificate

/// A client that trusts only `ca_pem` and resolves every name in `names` to `addr`.
fn client_trusting(ca_pem: &[u8], names: &[&str], addr: SocketAddr) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut builder = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .timeout(Duration::from_secs(10));
    for name in names {
        builder = builder.resolve(name, addr);
    }
    builder.build().unwrap()
}

fn delete_review() -> Value {
    serde_json::from_str(&read("tests/fixtures/admission/pod-delete.json")).unwrap()
}

/// POSTs an AdmissionReview to `https://{host}:{port}/validate` and returns the response.
async fn validate(
    client: &reqwest::Client,
    host: &str,
    port: u16,
) -> Result<Value, reqwest::Error> {
    let review = delete_review();
    let resp = client
        .post(format!("https://{host}:{port}{WEBHOOK_PATH}?timeout=10s"))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&review).unwrap())
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let body: Value = serde_json::from_slice(&resp.bytes().await?).unwrap();
    assert_eq!(body["response"]["uid"], review["request"]["uid"]);
    Ok(body["response"].clone())
}

/// The ConfigMap's policy, written to a file the way the kubelet mounts it.
fn write_configmap(m: &Manifests, name: &str, dir: &Path) {
    let configmap = m
        .all("ConfigMap")
        .into_iter()
        .find(|c| c["metadata"]["name"] == name)
        .unwrap();
    std::fs::create_dir_all(dir).unwrap();
    for (key, value) in configmap["data"].as_object().unwrap() {
        std::fs::write(dir.join(key), value.as_str().unwrap()).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_serves_the_scripts_certificate_for_every_service_name() {
    let (dir, out) = script_certs();
    let m = Manifests::base();
    let policy_dir = dir.path().join("policy");
    write_configmap(&m, "pullgate-policy", &policy_dir);
    let config = Config {
        tls: TlsSource::Files(CertFiles {
            cert: out.join("tls.crt"),
            key: out.join("tls.key"),
        }),
        policy: PolicySource::File(policy_dir.join("policy.yaml")),
        shutdown_delay: Duration::ZERO,
        ..Config::default()
    };
    let webhook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, admin_addr) = (webhook.local_addr().unwrap(), admin.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(pullgate::run(config, Listeners { webhook, admin }, async {
        let _ = stopped.await;
    }));

    let ca = std::fs::read(out.join("ca.crt")).unwrap();
    let mut names = SANS.to_vec();
    names.push("pullgate.other.svc");
    let client = client_trusting(&ca, &names, addr);
    for name in SANS {
        let response = validate(&client, name, addr.port())
            .await
            .unwrap_or_else(|e| panic!("TLS to {name} verified against the CA: {e:?}"));
        assert_eq!(response["allowed"], true, "{response}");
    }
    let wrong = validate(&client, "pullgate.other.svc", addr.port()).await;
    assert!(
        wrong.is_err(),
        "a name the certificate is not for is refused"
    );
    let stranger = client_trusting(
        &std::fs::read(make_other_ca(dir.path())).unwrap(),
        &[SERVICE_HOST],
        addr,
    );
    assert!(
        validate(&stranger, SERVICE_HOST, addr.port())
            .await
            .is_err(),
        "another CA is refused"
    );

    let plain = plain_client();
    for path in [HEALTHZ_PATH, READYZ_PATH, METRICS_PATH] {
        let resp = plain
            .get(format!("http://{admin_addr}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

/// A CA the webhook's certificate was not signed by.
fn make_other_ca(dir: &Path) -> PathBuf {
    let out = dir.join("other");
    make_certs(&["--out", out.to_str().unwrap()]);
    out.join("ca.crt")
}

/// A plain-HTTP client (reqwest wants a crypto provider even so).
fn plain_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real binary with the Deployment's args and environment, the Secret and the ConfigMap
/// laid out under a temporary root where the Deployment mounts them; only the listen
/// addresses are moved to free loopback ports. It must serve, turn unready on SIGTERM and exit
/// cleanly within the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_runs_with_the_deployments_configuration() {
    let (dir, out) = script_certs();
    let m = Manifests::base();
    let fake_root = dir.path().join("root");
    let mounts: Vec<(String, &Value)> = m.container()["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|mount| {
            let volume = m.pod_spec()["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == mount["name"])
                .unwrap();
            (mount["mountPath"].as_str().unwrap().to_owned(), volume)
        })
        .collect();
    for (path, volume) in &mounts {
        let target = fake_root.join(path.trim_start_matches('/'));
        if let Some(name) = volume["configMap"]["name"].as_str() {
            write_configmap(&m, name, &target);
        } else if volume["secret"]["secretName"].is_string() {
            std::fs::create_dir_all(&target).unwrap();
            for file in ["tls.crt", "tls.key", "ca.crt"] {
                std::fs::copy(out.join(file), target.join(file)).unwrap();
            }
        }
    }
    let (port, admin_port) = (free_port(), free_port());
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_pullgate"));
    command
        .args(str_list(&m.container()["args"]))
        .env_clear()
        .env("KUBECONFIG", dir.path().join("no-kubeconfig"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (name, value) in m.env() {
        let value = match mounts
            .iter()
            .find(|(path, _)| value.starts_with(path.as_str()))
        {
            Some(_) => fake_root
                .join(value.trim_start_matches('/'))
                .to_str()
                .unwrap()
                .to_owned(),
            None => value,
        };
        command.env(name, value);
    }
    command
        .env("PULLGATE_LISTEN", format!("127.0.0.1:{port}"))
        .env("PULLGATE_ADMIN_LISTEN", format!("127.0.0.1:{admin_port}"));
    let mut child = command.spawn().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });

    let plain = plain_client();
    let readyz = format!("http://127.0.0.1:{admin_port}{READYZ_PATH}");
    let started = Instant::now();
    loop {
        if let Ok(resp) = plain.get(&readyz).send().await
            && resp.status() == 200
        {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("pullgate exited ({status}): {}", log.join().unwrap());
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "not ready in 20s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let ca = std::fs::read(out.join("ca.crt")).unwrap();
    let client = client_trusting(&ca, &[SERVICE_HOST], addr);
    let response = validate(&client, SERVICE_HOST, port).await.unwrap();
    assert_eq!(response["allowed"], true);

    // SIGTERM, as the kubelet sends it: unready at once, serving until the delay is over.
    let args = deployment_serve_args(&m);
    let terminated = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let mut saw_unready = false;
    while terminated.elapsed() < args.shutdown_delay / 2 {
        if let Ok(resp) = plain.get(&readyz).send().await
            && resp.status() == 503
        {
            saw_unready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(saw_unready, "/readyz turns 503 on SIGTERM");
    validate(&client, SERVICE_HOST, port)
        .await
        .expect("still serving during the shutdown delay");

    let grace = Duration::from_secs(
        m.pod_spec()["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap(),
    );
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if terminated.elapsed() > grace {
            let _ = child.kill();
            panic!(
                "still running after the grace period: {}",
                log.join().unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = log.join().unwrap();
    assert!(status.success(), "{status}: {log}");
    assert!(terminated.elapsed() >= args.shutdown_delay);
    assert!(
        log.contains("serving admission reviews"),
        "PULLGATE_LOG=info logs: {log}"
    );
}
