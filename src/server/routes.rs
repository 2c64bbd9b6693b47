//! The handlers: `POST /validate` on the webhook port (read within bounds, reviewed within the
//! budget, answered as an AdmissionReview), and `/healthz`, `/readyz` and `/metrics` on the
//! admin port. Glue only: the decisions are made in [`crate::admission`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::connection::Peer;
use super::intake::Intake;
use crate::admission::Reviewer;
use crate::metrics::Metrics;

/// The path kube-apiserver POSTs AdmissionReviews to (the webhook's `clientConfig.service.path`).
pub const WEBHOOK_PATH: &str = "/validate";
/// Liveness, on the admin listener: 200 while the process serves.
pub const HEALTHZ_PATH: &str = "/healthz";
/// Readiness, on the admin listener: 503 once shutting down.
pub const READYZ_PATH: &str = "/readyz";
/// Prometheus metrics, on the admin listener.
pub const METRICS_PATH: &str = "/metrics";

/// What the handlers share.
pub(super) struct App {
    pub(super) reviewer: Reviewer,
    pub(super) metrics: Arc<Metrics>,
    pub(super) budget: Duration,
    /// How bodies are read, within memory and time.
    pub(super) intake: Intake,
    pub(super) ready: AtomicBool,
}

pub(super) fn webhook_router(app: Arc<App>) -> Router {
    Router::new()
        .route(WEBHOOK_PATH, post(validate))
        .with_state(app)
}

pub(super) fn admin_router(app: Arc<App>) -> Router {
    Router::new()
        .route(HEALTHZ_PATH, get(|| async { "ok" }))
        .route(READYZ_PATH, get(readyz))
        .route(METRICS_PATH, get(metrics))
        .with_state(app)
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    if app.ready.load(Ordering::SeqCst) {
        "ok".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let cache = app.reviewer.cache();
    app.metrics
        .verdict_cache(cache.entry_count(), cache.weighted_size());
    let store = app.reviewer.store();
    app.metrics
        .manifest_store(store.documents(), store.weighted_size());
    app.metrics
        .pull_budgets(&app.reviewer.budgets().remaining());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.encode(),
    )
        .into_response()
}

#[derive(Deserialize)]
struct ValidateQuery {
    /// The apiserver's own deadline for this call, e.g. `10s` (the webhook's timeoutSeconds).
    timeout: Option<String>,
}

/// The time a review may take: the configured budget, shortened to leave the apiserver a
/// margin when its own timeout is tighter.
pub fn review_budget(configured: Duration, apiserver_timeout: Option<&str>) -> Duration {
    let Some(timeout) = apiserver_timeout.and_then(|t| humantime::parse_duration(t).ok()) else {
        return configured;
    };
    // A fifth of the apiserver's timeout, at least 300 ms, is left for the network and for
    // writing the answer.
    let margin = (timeout / 5).max(Duration::from_millis(300));
    configured.min(
        timeout
            .saturating_sub(margin)
            .max(Duration::from_millis(100)),
    )
}

async fn validate(
    State(app): State<Arc<App>>,
    Query(query): Query<ValidateQuery>,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let budget = review_budget(app.budget, query.timeout.as_deref());
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let read = app
        .intake
        .read(peer.ip(), declared, body, started + budget)
        .await;
    let response = match read {
        Ok(admitted) => {
            app.reviewer
                .review(&admitted.request, admitted.read, budget)
                .await
        }
        Err(invalid) => {
            app.metrics.review("unknown", "error", started.elapsed());
            // The reason names what was wrong (size, time, JSON position, missing field), never
            // the object's content.
            tracing::warn!(
                peer = %peer,
                reason = %without_quoted(&invalid.result.message),
                "invalid admission request"
            );
            *invalid
        }
    };
    axum::Json(response.into_review()).into_response()
}

/// `message` with every double-quoted part (where a JSON parser quotes a value it could not
/// use) replaced by `"…"`: a log line must not carry an object's content.
fn without_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for (i, part) in message.split('"').enumerate() {
        if i % 2 == 0 {
            out.push_str(part);
        } else {
            out.push_str("\"…\"");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_values_are_left_out_of_logs() {
        assert_eq!(
            without_quoted(r#"invalid type: string "hunter2", expected a map at line 1 column 9"#),
            r#"invalid type: string "…", expected a map at line 1 column 9"#
        );
        assert_eq!(without_quoted("no quotes"), "no quotes");
    }

    #[test]
    fn the_apiservers_timeout_shortens_the_budget_with_a_margin() {
        let eight = Duration::from_secs(8);
        assert_eq!(review_budget(eight, None), eight);
        assert_eq!(review_budget(eight, Some("30s")), eight);
        assert_eq!(review_budget(eight, Some("10s")), eight);
        assert_eq!(review_budget(eight, Some("5s")), Duration::from_secs(4));
        assert_eq!(review_budget(eight, Some("1s")), Duration::from_millis(700));
        assert_eq!(review_budget(eight, Some("garbage")), eight);
    }
}
