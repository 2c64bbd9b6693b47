//! An AdmissionReview body as pullgate reads it: the request's envelope fields, decoded once,
//! and its objects kept as raw JSON until [`crate::workload`] reads the few fields it needs.
//!
//! kube-rs' `AdmissionReview<DynamicObject>` buffers the whole body (a flattened `TypeMeta`),
//! builds a `serde_json::Value` of each object and leaves it to be decoded again; at thousands
//! of reviews a second that was the webhook's main cost. The answer is still kube-rs'
//! [`AdmissionResponse`], so its wire format stays the one kube-apiserver expects.

use kube::core::admission::{AdmissionResponse, Operation};
use kube::core::{GroupVersionKind, TypeMeta};
use serde::Deserialize;
use serde_json::value::RawValue;

/// The only version kube-apiserver is configured to send (`admissionReviewVersions: [v1]`).
pub const API_VERSION: &str = "admission.k8s.io/v1";
pub const KIND: &str = "AdmissionReview";

/// The body kube-apiserver POSTs. Named like the Kubernetes type so that serde's errors
/// ("expected struct AdmissionReview") speak the API's words.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AdmissionReview {
    api_version: String,
    kind: String,
    request: Option<AdmissionRequest>,
}

/// The request of an AdmissionReview: what is answered, and the objects, still raw.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    /// The review's own apiVersion and kind, echoed in the answer.
    #[serde(skip)]
    pub types: TypeMeta,
    pub uid: String,
    pub kind: GroupVersionKind,
    #[serde(default)]
    pub sub_resource: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    pub operation: Operation,
    #[serde(default)]
    pub object: Option<Box<RawValue>>,
    #[serde(default)]
    pub old_object: Option<Box<RawValue>>,
    #[serde(default)]
    pub dry_run: bool,
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
    let review: AdmissionReview =
        serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
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
    fn the_answer_echoes_uid_and_version_and_keeps_objects_raw() {
        let request = parse(
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{
                "uid":"u-1","kind":{"group":"","version":"v1","kind":"Pod"},
                "operation":"CREATE","namespace":"ns","dryRun":true,
                "object":{"spec":{"containers":[]}},"oldObject":null}}"#,
        )
        .expect("a review");
        assert_eq!(
            request.object.as_deref().map(RawValue::get),
            Some(r#"{"spec":{"containers":[]}}"#)
        );
        assert!(request.old_object.is_none() && request.dry_run);
        let review = serde_json::to_value(request.response().into_review()).expect("json");
        assert_eq!(review["apiVersion"], API_VERSION);
        assert_eq!(review["kind"], KIND);
        assert_eq!(review["response"]["uid"], "u-1");
        assert_eq!(review["response"]["allowed"], true);
    }
}
