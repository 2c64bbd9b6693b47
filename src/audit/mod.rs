//! Auditing what already runs: every workload that pulls images is listed (`list.rs`) and
//! decided by the same [`Reviewer`] as admission — the same probe, caches, credentials, pull
//! economy and policy — so an image that went bad after it was admitted (a deleted tag, a
//! layer a registry policy now blocks, an expired pull secret) is found before a pod is
//! rescheduled onto a node that cannot pull it.
//!
//! A pass decides each workload once, a bounded number at a time; identical probes are merged
//! by the verdict cache, so an image shared by a thousand workloads with the same credentials
//! is probed once. `pullgate audit` runs one pass; `serve --audit-interval` runs them in the
//! background on the replica that holds the audit Lease (`continuous.rs`).

pub(crate) mod continuous;
mod events;
mod lease;
pub(crate) mod list;
mod report;

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

pub use continuous::{AuditSettings, Continuous};
pub use list::Scope;
pub use report::{write_json, write_table, write_yaml};

use crate::admission::Reviewer;
use crate::policy::{DecisionKind, Policy};
use crate::probe::Verdict;

/// Workloads decided at once. Probes are bounded per registry host by the registry client,
/// and merged per image by the verdict cache; this bounds the memory of a pass.
const CONCURRENT_WORKLOADS: usize = 64;

/// Why a pass could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("listing {what}: {problem}")]
    List { what: String, problem: String },
    #[error("listing {what}: its continue token kept expiring")]
    Expired { what: String },
}

/// One image of one workload, as a pass found it.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub namespace: String,
    pub kind: &'static str,
    pub name: String,
    pub container: String,
    pub image: String,
    pub verdict: Verdict,
    pub reason: String,
    /// What the webhook would decide for the workload now.
    #[serde(serialize_with = "decision_str")]
    pub decision: DecisionKind,
    #[serde(skip)]
    pub(crate) uid: String,
    #[serde(skip)]
    pub(crate) api_version: String,
}

fn decision_str<S: serde::Serializer>(d: &DecisionKind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(d.as_str())
}

/// What one pass found.
#[derive(Debug, Default, Serialize)]
pub struct Pass {
    /// Every image of every workload, sorted by namespace, kind, name and container.
    pub rows: Vec<Row>,
    pub workloads: usize,
    /// Workloads the webhook would refuse now.
    pub denied: usize,
    /// Distinct images (as written) across the workloads.
    pub images: usize,
    /// Objects that could not be read as workloads.
    pub unreadable: Vec<String>,
    /// List pages fetched.
    pub pages: usize,
    pub seconds: f64,
    /// The process's peak resident memory when the pass ended (Linux), for `pullgate audit`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_bytes: Option<u64>,
}

/// `VmHWM` of `/proc/self/status`: the most memory the process has had resident.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Told how many of a pass's distinct images have been decided, of how many.
pub type Progress<'a> = &'a (dyn Fn(usize, usize) + Sync);

/// One pass over `scope`: list, then decide every workload within `budget` each.
pub async fn pass(
    client: &kube::Client,
    reviewer: &Reviewer,
    policy: &Policy,
    scope: &Scope,
    budget: Duration,
    progress: Progress<'_>,
) -> Result<Pass, AuditError> {
    let started = Instant::now();
    let listing = list::list(client, scope).await?;
    let total: HashSet<&str> = listing
        .found
        .iter()
        .flat_map(|f| f.workload.images.iter().map(|u| u.image.as_str()))
        .collect();
    let total_images = total.len();
    let done: Mutex<HashSet<&str>> = Mutex::new(HashSet::new());
    progress(0, total_images);
    let limit = tokio::sync::Semaphore::new(CONCURRENT_WORKLOADS);
    let decided = futures_util::future::join_all(listing.found.iter().map(|found| {
        let (done, limit) = (&done, &limit);
        async move {
            let _turn = limit.acquire().await;
            let outcome = reviewer
                .decide_workload_on(
                    &found.workload,
                    policy,
                    budget,
                    Some(&found.running_on).filter(|p| !p.is_empty()),
                )
                .await;
            let count = {
                let mut done = done.lock().unwrap_or_else(|e| e.into_inner());
                done.extend(found.workload.images.iter().map(|u| u.image.as_str()));
                done.len()
            };
            progress(count, total_images);
            outcome
        }
    }))
    .await;
    let mut pass = Pass {
        workloads: listing.found.len(),
        images: total_images,
        unreadable: listing.unreadable.clone(),
        pages: listing.pages,
        ..Pass::default()
    };
    for (found, outcome) in listing.found.iter().zip(decided) {
        let w = &found.workload;
        if outcome.decision.kind == DecisionKind::Deny {
            pass.denied += 1;
        }
        for finding in &outcome.findings {
            pass.rows.push(Row {
                namespace: w.namespace.clone(),
                kind: w.kind.as_str(),
                name: w.name.clone(),
                container: finding.container.clone(),
                image: finding.image.clone(),
                verdict: finding.verdict,
                reason: finding.reason.clone(),
                decision: outcome.decision.kind,
                uid: found.uid.clone(),
                api_version: found.api_version.clone(),
            });
        }
        // A refusal that is not about an image (too many images) still counts.
        if outcome.findings.is_empty()
            && outcome.decision.kind == DecisionKind::Deny
            && let Some(message) = &outcome.decision.message
        {
            pass.rows.push(Row {
                namespace: w.namespace.clone(),
                kind: w.kind.as_str(),
                name: w.name.clone(),
                container: String::new(),
                image: String::new(),
                verdict: Verdict::Invalid,
                reason: message.clone(),
                decision: outcome.decision.kind,
                uid: found.uid.clone(),
                api_version: found.api_version.clone(),
            });
        }
    }
    pass.rows.sort_by(|a, b| {
        (&a.namespace, a.kind, &a.name, &a.container).cmp(&(
            &b.namespace,
            b.kind,
            &b.name,
            &b.container,
        ))
    });
    pass.seconds = started.elapsed().as_secs_f64();
    Ok(pass)
}
