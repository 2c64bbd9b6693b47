//! Reading workloads from the admission fixtures, and placement.

use super::*;
use crate::admission::podspec::PodSpec;
use rstest::rstest;
use serde_json::{Value, json};

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!("../../../tests/fixtures/admission/", $name))
    };
}

/// A fixture's request, with its object edited by `edit` first.
fn edited(json: &str, edit: impl FnOnce(&mut Value)) -> AdmissionRequest {
    let mut review: Value = serde_json::from_str(json).expect("fixture is JSON");
    edit(&mut review["request"]["object"]);
    crate::admission::request::parse(&serde_json::to_vec(&review).expect("JSON"))
        .expect("fixture is an AdmissionReview")
}

fn request(json: &str) -> AdmissionRequest {
    edited(json, |_| {})
}

fn workload(req: &AdmissionRequest) -> Workload {
    from_request(req)
        .expect("fixture is readable")
        .expect("fixture has something to check")
}

/// The same review with the objects written before the request's kind, so that the
/// parser cannot read them in its first pass and keeps them raw.
fn objects_first(json: &str) -> Vec<u8> {
    let review: Value = serde_json::from_str(json).expect("fixture is JSON");
    let Value::Object(mut request) = review["request"].clone() else {
        panic!("fixture has a request");
    };
    let mut fields = Vec::new();
    for key in ["object", "oldObject"] {
        if let Some(value) = request.remove(key) {
            fields.push(format!("{}:{value}", json!(key)));
        }
    }
    fields.extend(request.iter().map(|(k, v)| format!("{}:{v}", json!(k))));
    format!(
        r#"{{"apiVersion":{},"kind":{},"request":{{{}}}}}"#,
        review["apiVersion"],
        review["kind"],
        fields.join(",")
    )
    .into_bytes()
}

#[rstest]
fn objects_read_in_the_first_pass_or_later_give_the_same_workload(
    #[files("tests/fixtures/admission/*.json")] path: std::path::PathBuf,
) {
    let json = std::fs::read_to_string(&path).expect("fixture");
    let in_pass = crate::admission::request::parse(json.as_bytes()).expect("an AdmissionReview");
    let later =
        crate::admission::request::parse(&objects_first(&json)).expect("an AdmissionReview");
    assert!(
        later.object.as_ref().is_none_or(|o| o.raw().is_some()),
        "{path:?}: an object before its kind is kept raw"
    );
    // Errors point into the JSON; the two bodies are laid out differently.
    let show = |r: &AdmissionRequest| match from_request(r) {
        Ok(workload) => format!("{workload:?}"),
        Err(e) => e
            .to_string()
            .split(" at line ")
            .next()
            .unwrap_or_default()
            .to_owned(),
    };
    assert_eq!(show(&in_pass), show(&later), "{path:?}");
}

/// Each use as `"<location> <name>: <image>"`.
fn uses(list: &[ImageUse]) -> Vec<String> {
    let show = |u: &ImageUse| format!("{} {}: {}", u.location, u.container, u.image);
    list.iter().map(show).collect()
}

#[rstest]
#[case::deployment(fixture!("deployment.json"), Kind::Deployment, "shop/api", "default",
        &["container api: registry.example.com/team/api:3.2.1"])]
#[case::replicaset(fixture!("replicaset.json"), Kind::ReplicaSet, "shop/api-6d8f7b9c5d",
        "default", &["container api: registry.example.com/team/api:3.2.1"])]
#[case::statefulset(fixture!("statefulset.json"), Kind::StatefulSet, "shop/db", "db", &[
        "container postgres: registry.example.com/db/postgres:16.4",
        "init container init-perms: registry.example.com/infra/toolbox:1.2",
    ])]
#[case::daemonset(fixture!("daemonset.json"), Kind::DaemonSet, "monitoring/node-exporter",
        "node-exporter",
        &["container node-exporter: registry.example.com/monitoring/node-exporter:1.8.2"])]
#[case::job(fixture!("job.json"), Kind::Job, "batch-jobs/report", "default", &[
        "container report: registry.example.com/team/report:2.0",
        "image volume fonts: registry.example.com/assets/fonts:2025.1",
    ])]
#[case::cronjob_update(fixture!("cronjob.json"), Kind::CronJob, "ops/nightly-backup", "backup",
        &["container backup: registry.example.com/ops/backup:5.2"])]
#[case::replicationcontroller(fixture!("replicationcontroller.json"),
        Kind::ReplicationController, "legacy/legacy-web", "default",
        &["container web: registry.example.com/legacy/web:0.9"])]
#[case::podtemplate(fixture!("podtemplate.json"), Kind::PodTemplate, "shop/batch-worker",
        "default", &["container worker: registry.example.com/team/worker@sha256:\
            4f6a8c0e2b4d6f8a0c2e4b6d8f0a2c4e6b8d0f2a4c6e8b0d2f4a6c8e0b2d4f6a"])]
#[case::dry_run(fixture!("pod-dry-run.json"), Kind::Pod, "default/tmp", "default",
        &["container tmp: registry.example.com/tools/busybox:1.36"])]
fn reads_every_kind(
    #[case] json: &str,
    #[case] kind: Kind,
    #[case] at: &str,
    #[case] service_account: &str,
    #[case] images: &[&str],
) {
    let w = workload(&request(json));
    assert_eq!(w.kind, kind);
    assert_eq!(format!("{}/{}", w.namespace, w.name), at);
    assert_eq!(w.pod.service_account, service_account);
    assert_eq!(w.pod.is_template, kind != Kind::Pod);
    assert_eq!(uses(&w.images), images);
    assert!(w.skipped.is_empty());
}

#[test]
fn pod_create_reads_every_location_and_skips_never() {
    let w = workload(&request(fixture!("pod-create.json")));
    assert_eq!(
        uses(&w.images),
        [
            "container app: registry.example.com/team/app:1.0",
            "init container migrate: registry.example.com/team/migrate:2.3",
            "image volume models: registry.example.com/ml/models:2026.03",
        ]
    );
    assert_eq!(w.images[2].pull_policy.as_deref(), Some("IfNotPresent"));
    assert_eq!(
        uses(&w.skipped),
        ["container cache-warmer: registry.example.com/team/cache-warmer:0.4"]
    );
    let facts = PodFacts {
        image_pull_secrets: vec!["regcred".into(), "team-pull".into()],
        service_account: "checkout".into(),
        is_template: false,
    };
    assert_eq!(w.pod, facts);
    assert_eq!(w.platforms(&cluster(BOTH)), cluster(&["linux/arm64"]));
}

#[test]
fn update_checks_only_new_images() {
    let mut req = request(fixture!("pod-update.json"));
    let w = workload(&req);
    let app = "container app: registry.example.com/team/app:1.1";
    assert_eq!(uses(&w.images), [app]);
    assert!(w.skipped.is_empty(), "unchanged Never images are not new");

    req.old_object = None;
    assert_eq!(
        workload(&req).images.len(),
        3,
        "without oldObject all is new"
    );
}

#[test]
fn update_ignores_images_used_anywhere_in_old_object() {
    let req = edited(fixture!("pod-update.json"), |o| {
        o["spec"]["containers"][0]["image"] = "registry.example.com/ml/models:2026.03".into()
    });
    assert!(workload(&req).images.is_empty());
}

#[test]
fn ephemeral_containers_subresource_checks_only_new_debug_images() {
    let req = request(fixture!("pod-ephemeralcontainers.json"));
    let w = workload(&req);
    let debug = "ephemeral container debugger-k2m9x: registry.example.com/tools/netshoot:0.13";
    assert_eq!(uses(&w.images), [debug]);
    assert_eq!(w.name, "checkout");

    // Containers cannot change through this subresource; only debug images are its business.
    let req = edited(fixture!("pod-ephemeralcontainers.json"), |o| {
        o["spec"]["containers"][0]["image"] = "registry.example.com/x/y:1".into()
    });
    assert_eq!(uses(&workload(&req).images), [debug]);
}

#[rstest]
fn other_subresources_are_ignored(#[values("status", "binding", "exec")] sub: &str) {
    let mut req = request(fixture!("pod-update.json"));
    req.sub_resource = Some(sub.into());
    assert!(from_request(&req).expect("readable").is_none());
}

#[test]
fn delete_and_connect_are_ignored() {
    let mut req = request(fixture!("pod-delete.json"));
    assert!(from_request(&req).expect("readable").is_none());
    req.operation = Operation::Connect;
    assert!(from_request(&req).expect("readable").is_none());
}

#[test]
fn unsupported_kind_is_an_error() {
    let err = from_request(&request(fixture!("rollout.json"))).unwrap_err();
    assert!(
        matches!(&err, WorkloadError::UnsupportedKind { group, version, kind }
                if group == "argoproj.io" && version == "v1alpha1" && kind == "Rollout"),
        "{err:?}"
    );
}

#[test]
fn malformed_object_says_kind_and_problem() {
    let err = from_request(&request(fixture!("malformed.json"))).unwrap_err();
    assert!(matches!(err, WorkloadError::Malformed { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("Pod") && msg.contains("expected a string"),
        "{msg}"
    );
}

#[test]
fn missing_object_on_create_is_an_error() {
    let mut req = request(fixture!("pod-create.json"));
    req.object = None;
    let err = from_request(&req).unwrap_err();
    assert!(
        matches!(err, WorkloadError::MissingObject { kind: Kind::Pod }),
        "{err:?}"
    );
}

#[test]
fn replication_controller_without_template_has_no_images() {
    let req = edited(fixture!("replicationcontroller.json"), |o| {
        let spec = o["spec"].as_object_mut().expect("spec is an object");
        spec.remove("template");
    });
    let w = workload(&req);
    assert!(w.images.is_empty());
    assert_eq!(w.pod.service_account, "default");
}

#[test]
fn generate_name_stands_in_for_missing_name() {
    let req = edited(fixture!("pod-dry-run.json"), |o| {
        o["metadata"]["name"] = Value::Null;
        o["metadata"]["generateName"] = "tmp-".into();
    });
    assert_eq!(workload(&req).name, "tmp-*");
}

fn spec(json: Value) -> PodSpec {
    serde_json::from_value(json).expect("valid pod spec")
}

#[rstest]
#[case::deprecated_only(json!({"serviceAccount": "old"}), "old")]
#[case::both(json!({"serviceAccount": "old", "serviceAccountName": "new"}), "new")]
#[case::empty(json!({"serviceAccountName": ""}), "default")]
fn service_account(#[case] mut pod: Value, #[case] expected: &str) {
    pod["containers"] = json!([]);
    assert_eq!(
        pod_facts(&spec(pod), false).unwrap().service_account,
        expected
    );
}

#[test]
fn pull_secrets_keep_order_and_drop_empty_and_duplicates() {
    let secrets = json!([{"name": "b"}, {"name": ""}, {"name": "a"}, {"name": "b"}, {}]);
    let s = spec(json!({"containers": [], "imagePullSecrets": secrets}));
    assert_eq!(pod_facts(&s, true).unwrap().image_pull_secrets, ["b", "a"]);
}

#[test]
fn sixty_four_distinct_pull_secrets_are_read_and_more_are_an_error() {
    let names = |n: usize| -> Value {
        // Every name twice: duplicates do not count towards the cap.
        (0..2 * n)
            .map(|i| json!({"name": format!("s{}", i % n)}))
            .collect()
    };
    let s = spec(json!({"containers": [], "imagePullSecrets": names(MAX_PULL_SECRETS)}));
    assert_eq!(
        pod_facts(&s, false).unwrap().image_pull_secrets.len(),
        MAX_PULL_SECRETS
    );
    let s = spec(json!({"containers": [], "imagePullSecrets": names(MAX_PULL_SECRETS + 1)}));
    assert_eq!(pod_facts(&s, false).unwrap_err(), "more than 64");
}

#[test]
fn too_many_images_are_refused_before_any_is_read() {
    let containers: Vec<Value> = (0..=MAX_IMAGE_USES)
        .map(|i| json!({"name": format!("c{i}"), "image": format!("r.example/i{i}:1")}))
        .collect();
    let req = edited(fixture!("pod-create.json"), |o| {
        o["spec"]["containers"] = Value::Array(containers);
        o["spec"]["initContainers"] = json!([]);
        o["spec"]["volumes"] = json!([]);
    });
    let err = from_request(&req).unwrap_err();
    assert!(
        matches!(
            &err,
            WorkloadError::TooMany {
                kind: Kind::Pod,
                max: MAX_IMAGE_USES,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("lists 2049 images"), "{err}");
}

/// The cluster platforms a pod with this spec may run on.
fn platforms(spec: &PodSpec, cluster: &[Platform]) -> Vec<Platform> {
    Placement::from_spec(spec).platforms(cluster)
}

const ARCH: &str = "kubernetes.io/arch";
const OS: &str = "kubernetes.io/os";
const BOTH: &[&str] = &["linux/amd64", "linux/arm64"];

fn cluster(list: &[&str]) -> Vec<Platform> {
    let parse = |p: &&str| Platform::parse(p).expect("valid platform");
    list.iter().map(parse).collect()
}

/// A pod spec with this nodeSelector and these required node affinity terms.
fn pod(selector: Value, terms: &[Value]) -> PodSpec {
    let mut pod = json!({"containers": [], "nodeSelector": selector});
    if !terms.is_empty() {
        let required = json!({"nodeSelectorTerms": terms});
        pod["affinity"] =
            json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}});
    }
    spec(pod)
}

fn term(expressions: &[Value]) -> Value {
    json!({"matchExpressions": expressions})
}

fn expr(key: &str, op: &str, values: &[&str]) -> Value {
    json!({"key": key, "operator": op, "values": values})
}

#[rstest]
#[case::unconstrained(json!({}), vec![], BOTH)]
#[case::selector_pin(json!({ARCH: "arm64"}), vec![], &["linux/arm64"])]
#[case::beta_os_label(json!({"beta.kubernetes.io/os": "linux"}), vec![], BOTH)]
#[case::in_two(json!({}), vec![term(&[expr(ARCH, "In", &["amd64", "arm64"])])], BOTH)]
#[case::in_intersected(json!({}), vec![term(&[
        expr(ARCH, "In", &["amd64", "arm64"]), expr(ARCH, "In", &["arm64", "s390x"])
    ])], &["linux/arm64"])]
#[case::not_in(json!({}), vec![term(&[expr(ARCH, "NotIn", &["arm64"])])], &["linux/amd64"])]
#[case::ored_one_unconstrained(json!({}), vec![
        term(&[expr(ARCH, "In", &["arm64"])]),
        term(&[expr("topology.kubernetes.io/zone", "In", &["eu-1a"])]),
    ], BOTH)]
#[case::ored_union(json!({}), vec![
        term(&[expr(ARCH, "In", &["arm64"])]),
        term(&[expr(ARCH, "In", &["amd64"]), expr(OS, "In", &["linux"])]),
    ], BOTH)]
#[case::selector_and_affinity(json!({"beta.kubernetes.io/arch": "arm64"}),
        vec![term(&[expr(ARCH, "In", &["amd64", "arm64"])])], &["linux/arm64"])]
#[case::pin_outside_cluster(json!({ARCH: "s390x"}), vec![], &["linux/s390x"])]
#[case::affinity_pin_outside(json!({}), vec![term(&[expr(ARCH, "In", &["ppc64le"])])],
        &["linux/ppc64le"])]
#[case::pin_both_outside(json!({ARCH: "amd64", OS: "windows"}), vec![], &["windows/amd64"])]
#[case::os_only_pin_outside(json!({OS: "windows"}), vec![], BOTH)]
#[case::excludes_all_without_pin(json!({}),
        vec![term(&[expr(ARCH, "NotIn", &["amd64", "arm64"])])], BOTH)]
#[case::does_not_exist(json!({}), vec![term(&[expr(ARCH, "DoesNotExist", &[])])], BOTH)]
#[case::empty_term_matches_nothing(json!({}), vec![term(&[]), term(&[
        expr(ARCH, "In", &["arm64"])
    ])], &["linux/arm64"])]
#[case::empty_selector_value(json!({ARCH: ""}), vec![], BOTH)]
fn platforms_from_pod(
    #[case] selector: Value,
    #[case] terms: Vec<Value>,
    #[case] expected: &[&str],
) {
    assert_eq!(
        platforms(&pod(selector, &terms), &cluster(BOTH)),
        cluster(expected)
    );
}

#[test]
fn variants_in_cluster_list_match_on_os_and_arch() {
    let list = cluster(&["linux/amd64", "linux/arm/v6", "linux/arm/v7"]);
    let arm = platforms(&pod(json!({ARCH: "arm"}), &[]), &list);
    assert_eq!(arm, cluster(&["linux/arm/v6", "linux/arm/v7"]));
}

#[test]
fn alternatives_keep_os_and_arch_together() {
    let linux_amd = term(&[expr(ARCH, "In", &["amd64"]), expr(OS, "In", &["linux"])]);
    let windows_arm = term(&[expr(ARCH, "In", &["arm64"]), expr(OS, "In", &["windows"])]);
    let list = cluster(&["linux/amd64", "linux/arm64", "windows/arm64"]);
    let fitting = platforms(&pod(json!({}), &[linux_amd, windows_arm]), &list);
    assert_eq!(fitting, cluster(&["linux/amd64", "windows/arm64"]));
}
