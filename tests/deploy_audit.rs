//! deploy/audit: the component that turns the background audit on, checked against what the
//! audit does (the kinds it lists, the Lease and Events it writes, the flag it reads) and the
//! metrics its alert example uses.

use std::collections::BTreeSet;
use std::path::Path;

use clap::CommandFactory;
use pullgate::cli::Cli;
use serde_json::Value;

fn docs(rel: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap();
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap()
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

/// (group, resource, verb) of every rule of `role`.
fn grants(role: &Value) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    out.insert((
                        group.as_str().unwrap().to_owned(),
                        resource.as_str().unwrap().to_owned(),
                        verb.as_str().unwrap().to_owned(),
                    ));
                }
            }
        }
    }
    out
}

#[test]
fn the_audit_rbac_is_what_the_audit_uses_and_no_more() {
    let rbac = docs("deploy/audit/rbac.yaml");
    let cluster_role = rbac.iter().find(|d| d["kind"] == "ClusterRole").unwrap();
    let expected: BTreeSet<(String, String, String)> = [
        ("", "pods", "list"),
        ("", "replicationcontrollers", "list"),
        ("", "nodes", "list"),
        ("apps", "deployments", "list"),
        ("apps", "statefulsets", "list"),
        ("apps", "daemonsets", "list"),
        ("apps", "replicasets", "list"),
        ("batch", "jobs", "list"),
        ("batch", "cronjobs", "list"),
        ("", "events", "create"),
        ("", "events", "patch"),
    ]
    .iter()
    .map(|(g, r, v)| (g.to_string(), r.to_string(), v.to_string()))
    .collect();
    assert_eq!(grants(cluster_role), expected);
    // The Lease only in pullgate's namespace, through a Role.
    let role = rbac.iter().find(|d| d["kind"] == "Role").unwrap();
    assert_eq!(role["metadata"]["namespace"], "pullgate");
    let lease: BTreeSet<_> = ["get", "create", "update"]
        .iter()
        .map(|v| {
            (
                "coordination.k8s.io".to_owned(),
                "leases".to_owned(),
                v.to_string(),
            )
        })
        .collect();
    assert_eq!(grants(role), lease);
    for binding in rbac
        .iter()
        .filter(|d| d["kind"].as_str().unwrap().ends_with("Binding"))
    {
        assert_eq!(binding["subjects"][0]["name"], "pullgate");
        assert_eq!(binding["subjects"][0]["namespace"], "pullgate");
    }
}

#[test]
fn the_component_sets_the_flag_and_the_pods_identity() {
    let k = &docs("deploy/audit/kustomization.yaml")[0];
    assert_eq!(k["kind"], "Component");
    let ops: Vec<Value> =
        serde_saphyr::from_str(k["patches"][0]["patch"].as_str().unwrap()).unwrap();
    let env: Vec<&Value> = ops.iter().map(|op| &op["value"]).collect();
    let serve = Cli::command();
    let serve = serve.find_subcommand("serve").unwrap();
    let interval = env
        .iter()
        .find(|e| e["name"] == "PULLGATE_AUDIT_INTERVAL")
        .unwrap();
    assert!(
        serve
            .get_arguments()
            .any(|a| a.get_env().is_some_and(|e| e == "PULLGATE_AUDIT_INTERVAL")),
        "a serve flag reads it"
    );
    humantime::parse_duration(interval["value"].as_str().unwrap()).unwrap();
    for (name, field) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        let var = env.iter().find(|e| e["name"] == name).unwrap();
        assert_eq!(var["valueFrom"]["fieldRef"]["fieldPath"], field);
    }
}

#[test]
fn the_alert_example_uses_metrics_pullgate_exports() {
    let rule = &docs("deploy/audit/alerts.yaml")[0];
    // A pass with one problem, as the background audit publishes it.
    let metrics = pullgate::metrics::Metrics::new();
    metrics.audit.publish(pullgate::metrics::PassFigures {
        problems: vec![pullgate::metrics::ProblemLabels {
            namespace: "shop".into(),
            kind: "Deployment".into(),
            name: "api".into(),
            container: "app".into(),
            image: "r.io/api:1".into(),
            verdict: "blocked".into(),
        }],
        totals: vec![("blocked".into(), 1)],
        namespaces: vec![("shop".into(), "blocked".into(), 1)],
        workloads: 1,
        ended: 1.0,
        seconds: 1.0,
    });
    metrics.audit.leader(true);
    let exported = metrics.encode();
    let mut used = 0;
    for group in rule["spec"]["groups"].as_array().unwrap() {
        for alert in group["rules"].as_array().unwrap() {
            let expr = alert["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("pullgate_") {
                    used += 1;
                    assert!(
                        exported.contains(&format!("# TYPE {word} ")),
                        "{word} is not exported:\n{exported}"
                    );
                }
            }
        }
    }
    assert!(used >= 2);
}
