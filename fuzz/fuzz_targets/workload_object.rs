//! `workload::from_parts` on arbitrary JSON as the object (and old object) of every kind
//! pullgate reads, on CREATE, UPDATE and the `ephemeralcontainers` subresource.
#![no_main]

use kube::core::GroupVersionKind;
use kube::core::admission::Operation;
use libfuzzer_sys::fuzz_target;
use pullgate::admission::workload::{self, RequestParts};
use pullgate::oci::platform::Platform;
use serde_json::Value;
use serde_json::value::{RawValue, to_raw_value};

const KINDS: [(&str, &str); 10] = [
    ("", "Pod"),
    ("apps", "Deployment"),
    ("apps", "ReplicaSet"),
    ("apps", "StatefulSet"),
    ("apps", "DaemonSet"),
    ("batch", "Job"),
    ("batch", "CronJob"),
    ("", "ReplicationController"),
    ("", "PodTemplate"),
    ("example.com", "Widget"),
];

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    // An AdmissionReview's object when the input is one, else the input itself.
    let raw = |v: &Value| -> Box<RawValue> { to_raw_value(v).expect("a Value serialises") };
    let object = raw(value.pointer("/request/object").unwrap_or(&value));
    let old = value.pointer("/request/oldObject").map(raw);
    let (object, old) = (&*object, old.as_deref());
    let cluster = [
        Platform::linux_amd64(),
        Platform::parse("linux/arm64").unwrap(),
    ];
    for (group, kind) in KINDS {
        let gvk = GroupVersionKind::gvk(group, "v1", kind);
        for (operation, sub_resource, old_object) in [
            (Operation::Create, None, None),
            (Operation::Update, None, old.or(Some(object))),
            (Operation::Update, Some("ephemeralcontainers"), old),
        ] {
            let parts = RequestParts {
                kind: &gvk,
                sub_resource,
                operation: &operation,
                namespace: Some("fuzz"),
                object: Some(object),
                old_object,
            };
            if let Ok(Some(w)) = workload::from_parts(&parts) {
                let _ = w.platforms(&cluster);
                if old_object.map(RawValue::get) == Some(object.get()) {
                    assert!(w.images.is_empty(), "an unchanged object adds no image");
                }
            }
        }
    }
});
