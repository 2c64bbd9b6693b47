//! The few fields of a Pod, or of a controller's pod template, that say what a node will pull
//! and where the pod may run, read straight from the request's JSON.
//!
//! The full k8s-openapi types decode every env var, probe, quantity and managed field of an
//! object only for pullgate to throw them away; on the hot path that was most of a review's
//! CPU. These types name only what is read, so serde skips the rest without allocating. The
//! field names follow the Kubernetes API (and k8s-openapi), and a field that is absent or
//! `null` reads as empty, as the apiserver treats it; a field that is read but of the wrong
//! type is an error.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `metadata`: the names the workload is reported by.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ObjectMeta {
    pub name: Option<String>,
    pub generate_name: Option<String>,
    pub namespace: Option<String>,
}

/// An object with metadata and a `spec` of type `S`: a Pod (`S` = [`PodSpec`]) or a
/// controller (`S` = [`TemplateSpec`] or [`CronJobSpec`]).
#[derive(Clone, Debug, Deserialize)]
pub(super) struct Object<S> {
    pub metadata: Option<ObjectMeta>,
    pub spec: Option<S>,
}

/// The spec of Deployments, ReplicaSets, StatefulSets, DaemonSets, Jobs and
/// ReplicationControllers: only its pod template is read.
#[derive(Clone, Debug, Deserialize)]
pub(super) struct TemplateSpec {
    pub template: Option<PodTemplateSpec>,
}

/// A CronJob's spec: the pod template of its job template.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct CronJobSpec {
    pub job_template: Option<JobTemplate>,
}

#[derive(Clone, Debug, Deserialize)]
pub(super) struct JobTemplate {
    pub spec: Option<TemplateSpec>,
}

/// A PodTemplate object: its template sits at the top level, not under `spec`.
#[derive(Clone, Debug, Deserialize)]
pub(super) struct PodTemplate {
    pub metadata: Option<ObjectMeta>,
    pub template: Option<PodTemplateSpec>,
}

#[derive(Clone, Debug, Deserialize)]
pub(super) struct PodTemplateSpec {
    pub spec: Option<PodSpec>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    pub containers: Option<Vec<Container>>,
    pub init_containers: Option<Vec<Container>>,
    pub ephemeral_containers: Option<Vec<Container>>,
    pub volumes: Option<Vec<Volume>>,
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
    pub service_account_name: Option<String>,
    /// The deprecated alias of `serviceAccountName`, still mirrored by the apiserver.
    pub service_account: Option<String>,
    pub node_selector: Option<BTreeMap<String, String>>,
    pub affinity: Option<Affinity>,
}

/// A container, init container or ephemeral container.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    pub name: Option<String>,
    pub image: Option<String>,
    pub image_pull_policy: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Volume {
    pub name: Option<String>,
    /// An image volume (`volumes[].image`, Kubernetes 1.31+).
    pub image: Option<ImageVolumeSource>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageVolumeSource {
    pub reference: Option<String>,
    pub pull_policy: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct LocalObjectReference {
    pub name: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Affinity {
    pub node_affinity: Option<NodeAffinity>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeAffinity {
    pub required_during_scheduling_ignored_during_execution: Option<NodeSelector>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSelector {
    pub node_selector_terms: Option<Vec<NodeSelectorTerm>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSelectorTerm {
    pub match_expressions: Option<Vec<NodeSelectorRequirement>>,
    /// Only whether there are any matters: a term with none of either matches no node.
    pub match_fields: Option<Vec<serde::de::IgnoredAny>>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct NodeSelectorRequirement {
    pub key: Option<String>,
    pub operator: Option<String>,
    pub values: Option<Vec<String>>,
}

/// Lists that are absent or `null` read as empty.
pub(super) fn list<T>(items: &Option<Vec<T>>) -> &[T] {
    items.as_deref().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn reads_only_what_it_names_and_skips_the_rest() {
        let pod: Object<PodSpec> = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "a", "managedFields": [{"fieldsV1": {"f:spec": {}}}]},
            "spec": {
                "containers": [{"name": "app", "image": "nginx:1", "env": [{"name": "X"}],
                    "resources": {"limits": {"cpu": "1"}}}],
                "volumes": [{"name": "m", "image": {"reference": "r/m:1"}}, {"name": "e", "emptyDir": {}}],
                "affinity": {"podAntiAffinity": {"whatever": [1, 2]}},
            }
        }))
        .expect("a pod");
        let spec = pod.spec.expect("spec");
        assert_eq!(list(&spec.containers)[0].image.as_deref(), Some("nginx:1"));
        assert_eq!(list(&spec.volumes).len(), 2);
        assert!(spec.affinity.expect("affinity").node_affinity.is_none());
    }

    #[test]
    fn null_lists_are_empty_and_wrong_types_are_errors() {
        let spec: PodSpec =
            serde_json::from_value(json!({"containers": null, "initContainers": null}))
                .expect("nulls are absent");
        assert!(list(&spec.containers).is_empty() && list(&spec.init_containers).is_empty());
        let err = serde_json::from_value::<PodSpec>(json!({"containers": [{"image": 42}]}))
            .expect_err("an image must be a string");
        assert!(err.to_string().contains("expected a string"), "{err}");
    }
}
