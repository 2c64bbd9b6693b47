//! The answer to a review: the decisions for what cannot be probed (an unreadable object, a
//! review that ran out of time), and the AdmissionResponse a decision becomes.

use std::time::Duration;

use kube::core::admission::AdmissionResponse;
use kube::core::response::StatusSummary;

use super::Outcome;
use super::request::AdmissionRequest;
use super::workload::WorkloadError;
use crate::policy::{Decision, Policy};
use crate::probe::Verdict;

/// The decision for a request whose object cannot be read.
pub(super) fn unreadable(policy: &Policy, error: &WorkloadError) -> Outcome {
    let (verdict, kind) = match error {
        // A kind the webhook is not meant to see (a misconfigured rule): not the user's fault.
        WorkloadError::UnsupportedKind { .. } => (Verdict::Unavailable, "unknown"),
        WorkloadError::Malformed { .. } => (Verdict::Invalid, "unknown"),
        WorkloadError::MissingObject { kind } | WorkloadError::TooMany { kind, .. } => {
            (Verdict::Invalid, kind.as_str())
        }
    };
    let message = format!("pullgate: {error}");
    Outcome {
        kind,
        decision: policy.decide_problem(verdict, message),
        findings: Vec::new(),
    }
}

/// The answer when the review itself ran out of time: the policy for `unavailable`.
pub(super) fn overran(policy: &Policy, budget: Duration) -> Outcome {
    let message = format!(
        "pullgate: the review did not finish within {}",
        humantime::format_duration(budget)
    );
    Outcome {
        kind: "unknown",
        decision: policy.decide_problem(Verdict::Unavailable, message),
        findings: Vec::new(),
    }
}

/// The AdmissionResponse for `decision`, echoing the request's uid.
pub(super) fn response(request: &AdmissionRequest, decision: Decision) -> AdmissionResponse {
    let mut response = request.response();
    let allowed = decision.allowed();
    if let Some(message) = decision.message.filter(|_| !allowed) {
        response = response.deny(message);
        response.result.status = Some(StatusSummary::Failure);
        response.result.code = 403;
        response.result.reason = "Forbidden".into();
    }
    response.allowed = allowed;
    if !decision.warnings.is_empty() {
        response.warnings = Some(decision.warnings);
    }
    response.audit_annotations = decision.audit.into_iter().collect();
    response
}
