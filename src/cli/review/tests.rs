//! Reading manifests and AdmissionReviews, and the text output.

use super::input::*;
use super::output::*;
use super::*;
use crate::admission::Kind;

fn read(file: &str, text: &str) -> Result<Input, ReviewError> {
    let mut input = Input::default();
    read_input(file, text.as_bytes(), "default", &mut input)?;
    Ok(input)
}

/// `(kind, namespace/name, document, item)` of every entry.
fn summary(input: &Input) -> Vec<(String, String, usize, Option<usize>)> {
    input
        .entries
        .iter()
        .map(|e| {
            (
                e.subject.kind.clone(),
                qualified(&e.subject.namespace, &e.subject.name),
                e.origin.document,
                e.origin.item,
            )
        })
        .collect()
}

fn row(
    kind: &str,
    name: &str,
    document: usize,
    item: Option<usize>,
) -> (String, String, usize, Option<usize>) {
    (kind.to_owned(), name.to_owned(), document, item)
}

const MULTI: &str = r#"
# a leading comment
apiVersion: apps/v1
kind: Deployment
metadata:
  name: api
  namespace: shop
spec:
  template:
    spec:
      imagePullSecrets: [{name: regcred}, {name: regcred}]
      containers:
        - {name: api, image: "registry.example.com/team/api:1.0"}
        - {name: cache, image: redis:7, imagePullPolicy: Never}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec: {ports: [{port: 80}]}
---
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly}
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          initContainers: [{name: setup, image: busybox}]
          containers: [{name: job, image: "registry.example.com/team/job:2"}]
"#;

#[test]
fn yaml_documents_become_create_requests_and_other_kinds_are_skipped() {
    let input = read("multi.yaml", MULTI).unwrap();
    // The empty document between two `---` is not counted.
    assert_eq!(
        summary(&input),
        vec![
            row("Deployment", "shop/api", 1, None),
            row("CronJob", "default/nightly", 3, None),
        ]
    );
    let deployment = &input.entries[0];
    assert!(deployment.subject.names_pull_secrets);
    assert_eq!(deployment.subject.not_pulled.len(), 1);
    assert_eq!(deployment.subject.not_pulled[0].image, "redis:7");
    let Target::Manifest(workload) = &deployment.target else {
        panic!("a manifest is reviewed as a workload");
    };
    assert_eq!(workload.kind, Kind::Deployment);
    assert_eq!(workload.pod.image_pull_secrets, vec!["regcred"]);
    assert_eq!(workload.images.len(), 1);
    let Target::Manifest(cronjob) = &input.entries[1].target else {
        panic!("a manifest is reviewed as a workload");
    };
    let images: Vec<&str> = cronjob.images.iter().map(|u| u.image.as_str()).collect();
    assert_eq!(images, ["registry.example.com/team/job:2", "busybox"]);
    assert!(!input.entries[1].subject.names_pull_secrets);

    assert_eq!(
        input.skipped,
        vec![Skipped {
            origin: Origin {
                file: "multi.yaml".into(),
                document: 2,
                item: None
            },
            api_version: "v1".into(),
            kind: "Service".into(),
            name: "api".into(),
        }]
    );
}

#[test]
fn the_namespace_flag_applies_only_where_metadata_names_none() {
    let mut input = Input::default();
    read_input("m.yaml", MULTI.as_bytes(), "ci", &mut input).unwrap();
    assert_eq!(input.entries[0].subject.namespace, "shop");
    assert_eq!(input.entries[1].subject.namespace, "ci");
}

#[test]
fn list_items_are_reviewed_one_by_one() {
    let text = r#"
apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: Pod
    metadata: {name: web, namespace: shop}
    spec: {containers: [{name: web, image: nginx}]}
  - apiVersion: v1
    kind: ConfigMap
    metadata: {name: settings}
  - apiVersion: apps/v1
    kind: StatefulSet
    metadata: {name: db}
    spec: {template: {spec: {containers: [{name: db, image: postgres:16}]}}}
"#;
    let input = read("list.yaml", text).unwrap();
    assert_eq!(
        summary(&input),
        vec![
            row("Pod", "shop/web", 1, Some(0)),
            row("StatefulSet", "default/db", 1, Some(2)),
        ]
    );
    assert_eq!(input.skipped.len(), 1);
    assert_eq!(input.skipped[0].kind, "ConfigMap");
    assert_eq!(input.skipped[0].origin.item, Some(1));
    assert_eq!(
        input.skipped[0].origin.to_string(),
        "list.yaml document 1 items[1]"
    );
}

#[test]
fn a_typed_list_lends_its_kind_to_its_items() {
    let text = r#"{"apiVersion": "apps/v1", "kind": "DaemonSetList", "metadata": {},
            "items": [{"metadata": {"name": "agent", "namespace": "ops"},
                       "spec": {"template": {"spec": {"containers": [{"name": "a", "image": "agent:1"}]}}}}]}"#;
    let input = read("ds.json", text).unwrap();
    assert_eq!(
        summary(&input),
        vec![row("DaemonSet", "ops/agent", 1, Some(0))]
    );
}

#[test]
fn json_objects_and_json_streams_are_read() {
    let pod = |name: &str| {
        format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}"}},"spec":{{"containers":[{{"name":"c","image":"nginx"}}]}}}}"#
        )
    };
    let input = read("one.json", &format!("\u{feff}  {}\n", pod("a"))).unwrap();
    assert_eq!(summary(&input), vec![row("Pod", "default/a", 1, None)]);
    let input = read("stream.json", &format!("{}\n{}", pod("a"), pod("b"))).unwrap();
    assert_eq!(
        summary(&input),
        vec![
            row("Pod", "default/a", 1, None),
            row("Pod", "default/b", 2, None)
        ]
    );
    // JSON documents separated by `---` are YAML, and read as such.
    let input = read("docs.yaml", &format!("{}\n---\n{}", pod("a"), pod("b"))).unwrap();
    assert_eq!(input.entries.len(), 2);
}

#[test]
fn kinds_are_mapped_by_group_and_version() {
    let gvk = group_version_kind("apps/v1", "Deployment");
    assert_eq!((gvk.group.as_str(), gvk.version.as_str()), ("apps", "v1"));
    let gvk = group_version_kind("v1", "Pod");
    assert_eq!((gvk.group.as_str(), gvk.version.as_str()), ("", "v1"));
    // Versions the apiserver no longer serves, CRDs and core kinds are not workloads.
    let text = r#"
apiVersion: extensions/v1beta1
kind: Deployment
metadata: {name: old}
---
apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {name: canary}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop}
"#;
    let input = read("other.yaml", text).unwrap();
    assert!(input.entries.is_empty());
    let kinds: Vec<(&str, &str)> = input
        .skipped
        .iter()
        .map(|s| (s.api_version.as_str(), s.kind.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("extensions/v1beta1", "Deployment"),
            ("argoproj.io/v1alpha1", "Rollout"),
            ("v1", "Namespace")
        ]
    );
}

#[test]
fn an_admission_review_in_yaml_is_read_as_the_webhook_reads_it() {
    let text = r#"
apiVersion: admission.k8s.io/v1
kind: AdmissionReview
request:
  uid: 0f7c
  kind: {group: "", version: v1, kind: Pod}
  resource: {group: "", version: v1, resource: pods}
  namespace: shop
  operation: CREATE
  userInfo: {username: ci}
  object:
    apiVersion: v1
    kind: Pod
    metadata: {generateName: web-}
    spec: {containers: [{name: web, image: nginx}]}
"#;
    let input = read("review.yaml", text).unwrap();
    assert_eq!(summary(&input), vec![row("Pod", "shop/web-*", 1, None)]);
    let Target::Review(request) = &input.entries[0].target else {
        panic!("an AdmissionReview is decided as a review");
    };
    assert_eq!(request.uid, "0f7c");
}

#[test]
fn unreadable_documents_name_the_file_and_the_document() {
    let error = |file: &str, text: &str| match read(file, text) {
        Err(ReviewError::Document {
            file,
            document,
            source,
        }) => (file, document, source.to_string()),
        other => panic!("expected a document error, got {other:?}"),
    };
    let (file, document, message) = error(
        "bad.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\nkind: [unclosed\n",
    );
    assert_eq!((file.as_str(), document), ("bad.yaml", 2));
    assert!(message.contains("line 5"), "{message}");

    let (_, document, message) = error("s.json", "{\"kind\": \"Pod\"}\n{\"kind\": }");
    assert_eq!(document, 2);
    assert!(message.starts_with("invalid JSON"), "{message}");

    let (_, _, message) = error("scalar.yaml", "just text\n");
    assert!(message.contains("found a string"), "{message}");
    let (_, _, message) = error("seq.yaml", "- a\n- b\n");
    assert!(message.contains("found a list"), "{message}");
    let (_, _, message) = error("nokind.yaml", "apiVersion: v1\nmetadata: {}\n");
    assert_eq!(message, "the object has no kind");

    let (_, _, message) = error(
        "malformed.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: 5}\n",
    );
    assert!(message.starts_with("malformed Pod: "), "{message}");

    let (_, document, message) = error(
        "list.yaml",
        "---\napiVersion: v1\nkind: List\nitems: [{apiVersion: v1, kind: Pod, spec: {containers: x}}]\n",
    );
    assert_eq!(document, 1);
    assert!(message.starts_with("items[0]: malformed Pod"), "{message}");

    let (_, _, message) = error(
        "review.yaml",
        "apiVersion: admission.k8s.io/v1\nkind: AdmissionReview\nrequest: {uid: 5}\n",
    );
    assert!(message.contains("not a valid"), "{message}");

    assert!(matches!(
        read("bin", "\u{0}").map(|i| i.entries.len()),
        Err(ReviewError::Document { .. })
    ));
    let mut input = Input::default();
    assert!(matches!(
        read_input("latin1.yaml", b"kind: \xe9", "default", &mut input),
        Err(ReviewError::NotText { .. })
    ));
}

#[test]
fn text_output_escapes_what_the_manifest_controls() {
    let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: \"web\\nPod x/y: allow\"}\n\
                    spec: {containers: [{name: \"c\\u001b[31m\", image: \"UPPER\\rX\", imagePullPolicy: Never}]}\n";
    let entry = read("evil.yaml", text).unwrap().entries.remove(0);
    let outcome = Outcome {
        kind: "Pod",
        decision: crate::policy::Decision {
            kind: crate::policy::DecisionKind::Allow,
            ..Default::default()
        },
        findings: Vec::new(),
    };
    let mut out = Vec::new();
    write_text(&mut out, &[Reviewed::new(entry, outcome)]).unwrap();
    let out = String::from_utf8(out).unwrap();
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(
        out.starts_with("Pod default/web\\nPod x/y: allow: allow\n"),
        "{out}"
    );
    assert!(!out.contains('\u{1b}') && !out.contains('\r'), "{out}");
}

#[test]
fn empty_input_has_nothing_to_review() {
    for text in ["", "\n", "---\n", "# only a comment\n---\n...\n"] {
        let input = read("empty.yaml", text).unwrap();
        assert!(
            input.entries.is_empty() && input.skipped.is_empty(),
            "{text:?}"
        );
    }
}
