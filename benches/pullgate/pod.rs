//! Realistic Pod CREATE AdmissionReviews, as kube-apiserver sends them: metadata with labels,
//! annotations, owner references and managedFields, containers with env, ports, probes,
//! resources, mounts and security contexts, and a projected service-account volume.

use serde_json::{Value, json};

/// An AdmissionReview for a Pod whose first image runs as an init container and the others
/// as containers (with one image, that one is a container). Pinned to linux/amd64 by a
/// nodeSelector, like most real clusters' workloads.
pub fn pod_review(uid: &str, name: &str, images: &[String]) -> Value {
    let (init, main): (&[String], &[String]) = if images.len() > 1 {
        images.split_at(1)
    } else {
        (&[], images)
    };
    let init_containers: Vec<Value> = init
        .iter()
        .enumerate()
        .map(|(i, image)| container(&format!("migrate-{i}"), image, false))
        .collect();
    let containers: Vec<Value> = main
        .iter()
        .enumerate()
        .map(|(i, image)| container(&format!("app-{i}"), image, true))
        .collect();
    let mut managed_containers = serde_json::Map::new();
    for c in init_containers.iter().chain(&containers) {
        managed_containers.insert(
            format!(
                "k:{{\"name\":\"{}\"}}",
                c["name"].as_str().unwrap_or_default()
            ),
            json!({ ".": {}, "f:image": {}, "f:imagePullPolicy": {}, "f:name": {},
                    "f:env": {}, "f:ports": {}, "f:resources": {}, "f:volumeMounts": {} }),
        );
    }
    let object = json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "generateName": "checkout-7d9f8b6c5-",
            "namespace": "shop",
            "uid": "6b1f2c9e-3d4a-4f5b-9c8d-7e6f5a4b3c21",
            "creationTimestamp": "2026-03-10T09:14:22Z",
            "labels": {
                "app.kubernetes.io/name": "checkout",
                "app.kubernetes.io/part-of": "shop",
                "app.kubernetes.io/version": "3.2.1",
                "pod-template-hash": "7d9f8b6c5"
            },
            "annotations": {
                "kubectl.kubernetes.io/restartedAt": "2026-03-10T09:10:00Z",
                "prometheus.io/scrape": "true",
                "prometheus.io/port": "9090"
            },
            "ownerReferences": [{
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": "checkout-7d9f8b6c5",
                "uid": "2c4e6a8b-1d3f-4a5c-8e7f-9a0b1c2d3e4f",
                "controller": true,
                "blockOwnerDeletion": true
            }],
            "managedFields": [{
                "manager": "kube-controller-manager",
                "operation": "Update",
                "apiVersion": "v1",
                "time": "2026-03-10T09:14:22Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": {
                    "f:metadata": {
                        "f:generateName": {},
                        "f:labels": { ".": {}, "f:app.kubernetes.io/name": {},
                                      "f:app.kubernetes.io/part-of": {}, "f:pod-template-hash": {} },
                        "f:ownerReferences": { ".": {}, "k:{\"uid\":\"2c4e6a8b-1d3f-4a5c-8e7f-9a0b1c2d3e4f\"}": {} }
                    },
                    "f:spec": {
                        "f:containers": Value::Object(managed_containers),
                        "f:nodeSelector": {},
                        "f:serviceAccountName": {}
                    }
                }
            }]
        },
        "spec": {
            "volumes": [
                { "name": "config", "configMap": { "name": "checkout-config", "defaultMode": 420 } },
                { "name": "kube-api-access-x7q2m", "projected": { "defaultMode": 420, "sources": [
                    { "serviceAccountToken": { "expirationSeconds": 3607, "path": "token" } },
                    { "configMap": { "name": "kube-root-ca.crt", "items": [{ "key": "ca.crt", "path": "ca.crt" }] } },
                    { "downwardAPI": { "items": [{ "path": "namespace",
                        "fieldRef": { "apiVersion": "v1", "fieldPath": "metadata.namespace" } }] } }
                ] } }
            ],
            "initContainers": init_containers,
            "containers": containers,
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "nodeSelector": { "kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux" },
            "serviceAccountName": "checkout",
            "serviceAccount": "checkout",
            "securityContext": { "runAsNonRoot": true, "seccompProfile": { "type": "RuntimeDefault" } },
            "schedulerName": "default-scheduler",
            "tolerations": [
                { "key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300 },
                { "key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300 }
            ],
            "priority": 0,
            "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority"
        },
        "status": { "phase": "Pending", "qosClass": "Burstable" }
    });
    json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": uid,
            "kind": { "group": "", "version": "v1", "kind": "Pod" },
            "resource": { "group": "", "version": "v1", "resource": "pods" },
            "requestKind": { "group": "", "version": "v1", "kind": "Pod" },
            "requestResource": { "group": "", "version": "v1", "resource": "pods" },
            "name": name,
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]
            },
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": { "kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1" }
        }
    })
}

fn container(name: &str, image: &str, serves: bool) -> Value {
    let mut c = json!({
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["--config=/etc/checkout/config.yaml", "--log-format=json"],
        "env": [
            { "name": "RUST_LOG", "value": "info" },
            { "name": "DATABASE_URL", "valueFrom": { "secretKeyRef": { "name": "checkout-db", "key": "url" } } },
            { "name": "POD_NAME", "valueFrom": { "fieldRef": { "apiVersion": "v1", "fieldPath": "metadata.name" } } },
            { "name": "POD_IP", "valueFrom": { "fieldRef": { "apiVersion": "v1", "fieldPath": "status.podIP" } } },
            { "name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://otel-collector.observability:4317" }
        ],
        "resources": {
            "limits": { "memory": "512Mi" },
            "requests": { "cpu": "250m", "memory": "256Mi" }
        },
        "volumeMounts": [
            { "name": "config", "mountPath": "/etc/checkout", "readOnly": true },
            { "name": "kube-api-access-x7q2m", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true }
        ],
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": { "drop": ["ALL"] }
        }
    });
    if serves {
        c["ports"] = json!([
            { "name": "http", "containerPort": 8080, "protocol": "TCP" },
            { "name": "metrics", "containerPort": 9090, "protocol": "TCP" }
        ]);
        c["readinessProbe"] = json!({
            "httpGet": { "path": "/readyz", "port": "http", "scheme": "HTTP" },
            "periodSeconds": 5, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3
        });
        c["livenessProbe"] = json!({
            "httpGet": { "path": "/healthz", "port": "http", "scheme": "HTTP" },
            "initialDelaySeconds": 10, "periodSeconds": 10, "timeoutSeconds": 1, "failureThreshold": 3
        });
    }
    c
}

/// The JSON bytes of [`pod_review`].
pub fn pod_review_bytes(uid: &str, name: &str, images: &[String]) -> Vec<u8> {
    serde_json::to_vec(&pod_review(uid, name, images)).expect("a JSON value serialises")
}
