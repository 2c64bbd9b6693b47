//! An AdmissionReview body as pullgate reads it: the request's envelope fields, decoded once,
//! and its objects kept as raw JSON until [`crate::admission::workload`] reads the few fields it needs.
//!
//! kube-rs' `AdmissionReview<DynamicObject>` buffers the whole body (a flattened `TypeMeta`),
//! builds a `serde_json::Value` of each object and leaves it to be decoded again; at thousands
//! of reviews a second that was the webhook's main cost. The answer is still kube-rs'
//! [`AdmissionResponse`], so its wire format stays the one kube-apiserver expects.

use kube::core::admission::{AdmissionResponse, Operation};
use kube::core::{GroupVersionKind, TypeMeta};
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::object::{Kind, ObjectBody, ObjectSeed};

/// The only version kube-apiserver is configured to send (`admissionReviewVersions: [v1]`).
pub const API_VERSION: &str = "admission.k8s.io/v1";
pub const KIND: &str = "AdmissionReview";

/// The body kube-apiserver POSTs. Named like the Kubernetes type so that serde's errors
/// ("expected struct AdmissionReview") speak the API's words.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AdmissionReview<R> {
    api_version: String,
    kind: String,
    request: Option<R>,
}

/// The request of an AdmissionReview: what is answered, and the objects, read in the same
/// pass when their kind came before them (as kube-apiserver writes it), raw otherwise.
#[derive(Clone, Debug)]
pub struct AdmissionRequest {
    /// The review's own apiVersion and kind, echoed in the answer.
    pub types: TypeMeta,
    pub uid: String,
    pub kind: GroupVersionKind,
    pub sub_resource: Option<String>,
    pub name: String,
    pub namespace: Option<String>,
    pub operation: Operation,
    pub object: Option<ObjectBody>,
    pub old_object: Option<ObjectBody>,
    pub dry_run: bool,
}

/// The request with its objects kept raw: how a body is read again when an object does not
/// read as its kind, so that the error is the workload's, worded for the kind.
#[derive(Deserialize)]
#[serde(
    rename = "AdmissionRequest",
    expecting = "struct AdmissionRequest",
    rename_all = "camelCase"
)]
struct RawRequest {
    uid: String,
    kind: GroupVersionKind,
    #[serde(default)]
    sub_resource: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    operation: Operation,
    #[serde(default)]
    object: Option<Box<RawValue>>,
    #[serde(default)]
    old_object: Option<Box<RawValue>>,
    #[serde(default)]
    dry_run: bool,
}

impl From<RawRequest> for AdmissionRequest {
    fn from(raw: RawRequest) -> Self {
        AdmissionRequest {
            types: TypeMeta::default(),
            uid: raw.uid,
            kind: raw.kind,
            sub_resource: raw.sub_resource,
            name: raw.name,
            namespace: raw.namespace,
            operation: raw.operation,
            object: raw.object.map(ObjectBody::Raw),
            old_object: raw.old_object.map(ObjectBody::Raw),
            dry_run: raw.dry_run,
        }
    }
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum Field {
    Uid,
    Kind,
    SubResource,
    Name,
    Namespace,
    Operation,
    Object,
    OldObject,
    DryRun,
    #[serde(other)]
    Other,
}

const FIELDS: &[&str] = &[
    "uid",
    "kind",
    "subResource",
    "name",
    "namespace",
    "operation",
    "object",
    "oldObject",
    "dryRun",
];

impl<'de> Deserialize<'de> for AdmissionRequest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_struct("AdmissionRequest", FIELDS, RequestVisitor)
    }
}

struct RequestVisitor;

impl<'de> Visitor<'de> for RequestVisitor {
    type Value = AdmissionRequest;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("struct AdmissionRequest")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AdmissionRequest, A::Error> {
        fn set<T, E: de::Error>(
            slot: &mut Option<T>,
            name: &'static str,
            value: T,
        ) -> Result<(), E> {
            match slot.replace(value) {
                Some(_) => Err(E::duplicate_field(name)),
                None => Ok(()),
            }
        }
        let mut uid = None;
        let mut kind: Option<GroupVersionKind> = None;
        let mut sub_resource = None;
        let mut name = None;
        let mut namespace = None;
        let mut operation = None;
        let mut object = None;
        let mut old_object = None;
        let mut dry_run = None;
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Uid => set(&mut uid, "uid", map.next_value::<String>()?)?,
                Field::Kind => set(&mut kind, "kind", map.next_value()?)?,
                Field::SubResource => set(&mut sub_resource, "subResource", map.next_value()?)?,
                Field::Name => set(&mut name, "name", map.next_value::<String>()?)?,
                Field::Namespace => set(&mut namespace, "namespace", map.next_value()?)?,
                Field::Operation => set(&mut operation, "operation", map.next_value()?)?,
                Field::Object => set(&mut object, "object", object_body(&mut map, &kind)?)?,
                Field::OldObject => {
                    set(&mut old_object, "oldObject", object_body(&mut map, &kind)?)?;
                }
                Field::DryRun => set(&mut dry_run, "dryRun", map.next_value::<bool>()?)?,
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(AdmissionRequest {
            types: TypeMeta::default(),
            uid: uid.ok_or_else(|| de::Error::missing_field("uid"))?,
            kind: kind.ok_or_else(|| de::Error::missing_field("kind"))?,
            sub_resource: sub_resource.flatten(),
            name: name.unwrap_or_default(),
            namespace: namespace.flatten(),
            operation: operation.ok_or_else(|| de::Error::missing_field("operation"))?,
            object: object.flatten(),
            old_object: old_object.flatten(),
            dry_run: dry_run.unwrap_or_default(),
        })
    }
}

/// The next value as an object: read as its kind when the kind came first and is one
/// pullgate reads (the bytes are then gone through once), kept as JSON otherwise.
fn object_body<'de, A: MapAccess<'de>>(
    map: &mut A,
    kind: &Option<GroupVersionKind>,
) -> Result<Option<ObjectBody>, A::Error> {
    match kind.as_ref().and_then(Kind::from_gvk) {
        Some(kind) => Ok(map
            .next_value_seed(ObjectSeed(kind))?
            .map(|parts| ObjectBody::Read(Box::new(parts)))),
        None => Ok(map
            .next_value::<Option<Box<RawValue>>>()?
            .map(ObjectBody::Raw)),
    }
}

impl AdmissionRequest {
    /// An admitting answer to this request, echoing its uid and review version.
    pub fn response(&self) -> AdmissionResponse {
        let mut response = AdmissionResponse::invalid("");
        response.types = self.types.clone();
        response.uid = self.uid.clone();
        response.allowed = true;
        response.result = Default::default();
        response
    }
}

/// The request inside an AdmissionReview body, or the answer for a body that is not one. The
/// answer echoes the request's `uid` whenever the body has one, so the apiserver can match it.
pub fn parse(bytes: &[u8]) -> Result<AdmissionRequest, Box<AdmissionResponse>> {
    let invalid = |problem: String| {
        let mut response = AdmissionResponse::invalid(format!(
            "pullgate: not a valid {API_VERSION} {KIND}: {problem}"
        ));
        // Only `request.uid` is read, so fields nested too deep for a full parse are skipped.
        response.uid = serde_json::from_slice::<UidOnly>(bytes)
            .ok()
            .and_then(|r| r.request)
            .and_then(|r| r.uid)
            .unwrap_or_default();
        Box::new(response)
    };
    let review = match serde_json::from_slice::<AdmissionReview<AdmissionRequest>>(bytes) {
        Ok(review) => review,
        // Read again with the objects kept raw: an envelope error is reported as it is, and
        // an object that does not read as its kind is reported by `workload`.
        Err(_) => {
            let review = serde_json::from_slice::<AdmissionReview<RawRequest>>(bytes)
                .map_err(|e| invalid(e.to_string()))?;
            AdmissionReview {
                api_version: review.api_version,
                kind: review.kind,
                request: review.request.map(AdmissionRequest::from),
            }
        }
    };
    if review.api_version != API_VERSION || review.kind != KIND {
        return Err(invalid(format!(
            "expected apiVersion {API_VERSION} and kind {KIND}, got {} {}",
            review.api_version, review.kind
        )));
    }
    let mut request = review
        .request
        .ok_or_else(|| invalid("the review carries no request".to_owned()))?;
    request.types = TypeMeta {
        api_version: review.api_version,
        kind: review.kind,
    };
    Ok(request)
}

/// Just enough of an AdmissionReview to echo its uid when the rest is unusable.
#[derive(Deserialize)]
struct UidOnly {
    request: Option<UidRequest>,
}

#[derive(Deserialize)]
struct UidRequest {
    uid: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_review_is_answered_with_its_uid() {
        let err = parse(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"abc-123","kind":5}}"#)
            .unwrap_err();
        assert_eq!(err.uid, "abc-123");
        assert!(!err.allowed);
        assert!(
            err.result.message.contains("not a valid"),
            "{}",
            err.result.message
        );
        let err = parse(b"\xff not json").unwrap_err();
        assert_eq!(err.uid, "");
        let err =
            parse(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#).unwrap_err();
        assert!(!err.allowed);
        assert!(err.result.message.contains("no request"));
    }

    #[test]
    fn the_answer_echoes_uid_and_version() {
        let request = parse(
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{
                "uid":"u-1","kind":{"group":"","version":"v1","kind":"Pod"},
                "operation":"CREATE","namespace":"ns","dryRun":true,
                "object":{"spec":{"containers":[]}},"oldObject":null}}"#,
        )
        .expect("a review");
        assert!(request.old_object.is_none() && request.dry_run);
        let review = serde_json::to_value(request.response().into_review()).expect("json");
        assert_eq!(review["apiVersion"], API_VERSION);
        assert_eq!(review["kind"], KIND);
        assert_eq!(review["response"]["uid"], "u-1");
        assert_eq!(review["response"]["allowed"], true);
    }

    fn review_of(request: &str) -> Vec<u8> {
        format!(
            r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{request}}}"#
        )
        .into_bytes()
    }

    const POD: &str = r#"{"group":"","version":"v1","kind":"Pod"}"#;
    const OBJECT: &str =
        r#"{"metadata":{"name":"p"},"spec":{"containers":[{"name":"a","image":"r.io/a:1"}]}}"#;

    /// Whether the object was read in the envelope's pass, and the images the workload has.
    fn read(body: &[u8]) -> (bool, Vec<String>) {
        let request = parse(body).expect("a review");
        let read_in_pass = matches!(request.object, Some(ObjectBody::Read(_)));
        let workload = crate::admission::workload::from_request(&request)
            .expect("readable")
            .expect("a workload");
        let images = workload.images.iter().map(|u| u.image.clone()).collect();
        (read_in_pass, images)
    }

    #[test]
    fn an_object_after_its_kind_is_read_in_the_same_pass_and_before_it_later() {
        let kind_first = review_of(&format!(
            r#"{{"uid":"u","kind":{POD},"operation":"CREATE","object":{OBJECT}}}"#
        ));
        let object_first = review_of(&format!(
            r#"{{"uid":"u","object":{OBJECT},"operation":"CREATE","kind":{POD}}}"#
        ));
        assert_eq!(read(&kind_first), (true, vec!["r.io/a:1".to_owned()]));
        assert_eq!(read(&object_first), (false, vec!["r.io/a:1".to_owned()]));
    }

    #[test]
    fn objects_of_other_kinds_stay_raw() {
        let service = review_of(
            r#"{"uid":"u","kind":{"group":"","version":"v1","kind":"Service"},"operation":"CREATE","object":{"spec":{"ports":[]}}}"#,
        );
        let request = parse(&service).expect("a review");
        assert_eq!(
            request.object.as_ref().and_then(ObjectBody::raw),
            Some(r#"{"spec":{"ports":[]}}"#)
        );
    }

    #[test]
    fn an_object_that_does_not_read_as_its_kind_is_the_workloads_error() {
        // `containers` is not a list: the single pass fails, the body is read again with the
        // object raw, and the error names the kind.
        let body = review_of(&format!(
            r#"{{"uid":"u-9","kind":{POD},"operation":"CREATE","object":{{"spec":{{"containers":5}}}}}}"#
        ));
        let request = parse(&body).expect("the envelope is fine");
        assert_eq!(request.uid, "u-9");
        assert!(request.object.as_ref().and_then(ObjectBody::raw).is_some());
        let err = crate::admission::workload::from_request(&request).unwrap_err();
        assert!(err.to_string().starts_with("malformed Pod"), "{err}");
    }

    #[test]
    fn envelope_errors_are_reported_as_before() {
        for (request, says) in [
            (
                format!(r#"{{"kind":{POD},"operation":"CREATE"}}"#),
                "missing field `uid`",
            ),
            (
                r#"{"uid":"u","operation":"CREATE"}"#.to_owned(),
                "missing field `kind`",
            ),
            (
                format!(r#"{{"uid":"u","kind":{POD}}}"#),
                "missing field `operation`",
            ),
            (
                format!(r#"{{"uid":"u","uid":"v","kind":{POD},"operation":"CREATE"}}"#),
                "duplicate field `uid`",
            ),
            (
                format!(
                    r#"{{"uid":"u","kind":{POD},"operation":"CREATE","object":{OBJECT},"object":{OBJECT}}}"#
                ),
                "duplicate field `object`",
            ),
            (
                format!(r#"{{"uid":"u","kind":{POD},"operation":"EAT"}}"#),
                "unknown variant `EAT`",
            ),
        ] {
            let err = parse(&review_of(&request)).unwrap_err();
            assert!(!err.allowed);
            assert!(
                err.result.message.contains(says),
                "{request}: {}",
                err.result.message
            );
        }
    }
}
