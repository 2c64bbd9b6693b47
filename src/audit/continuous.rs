//! `serve --audit-interval`: audit passes in the background, on the one replica that holds the
//! audit Lease, so two replicas never double the registry traffic. The Lease is renewed on its
//! own schedule (a pass may take longer than the Lease lasts) and given up on shutdown. After
//! each pass the metrics are replaced and Events raised for images that turned not pullable.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::events::Events;
use super::lease::Lease;
use super::{Pass, Scope};
use crate::admission::Reviewer;
use crate::metrics::{Metrics, PassFigures, ProblemLabels};
use crate::policy::{Policy, PolicyError};
use crate::probe::Verdict;
use crate::reload::Reloading;

/// How the background audit runs.
#[derive(Clone, Debug)]
pub struct AuditSettings {
    /// Time from the start of one pass to the start of the next.
    pub interval: Duration,
    pub scope: Scope,
    /// Where the Lease is (pullgate's own namespace) and its name.
    pub lease_namespace: String,
    pub lease_name: String,
    /// This replica's name in the Lease (the pod's name).
    pub identity: String,
    /// How long a Lease not renewed lasts; it is renewed every third of that.
    pub lease_duration: Duration,
    /// Time each workload's images get to be probed.
    pub budget: Duration,
    /// Raise `ImageNotPullable` Events.
    pub events: bool,
}

impl AuditSettings {
    /// Defaults for `interval`: the Lease `pullgate-audit`, 30 s long.
    pub fn every(interval: Duration, lease_namespace: &str, identity: &str) -> Self {
        AuditSettings {
            interval,
            scope: Scope::default(),
            lease_namespace: lease_namespace.to_owned(),
            lease_name: "pullgate-audit".to_owned(),
            identity: identity.to_owned(),
            lease_duration: Duration::from_secs(30),
            budget: Duration::from_secs(60),
            events: true,
        }
    }
}

/// The background audit.
pub struct Continuous;

impl Continuous {
    /// Runs until `stop` resolves, then gives the Lease up.
    pub async fn run(
        settings: AuditSettings,
        client: kube::Client,
        reviewer: &Reviewer,
        policy: &Reloading<Policy, PolicyError>,
        metrics: &Metrics,
        stop: impl Future<Output = ()>,
    ) {
        let lease = Arc::new(Lease::new(
            client.clone(),
            &settings.lease_namespace,
            &settings.lease_name,
            &settings.identity,
            settings.lease_duration,
        ));
        let holds = Arc::new(AtomicBool::new(false));
        let (stop_tx, stop_rx) = watch::channel(false);
        let renewing = {
            let (lease, holds, mut stop_rx) = (lease.clone(), holds.clone(), stop_rx.clone());
            let audit_metrics = metrics.audit.clone();
            let every = settings.lease_duration / 3;
            tokio::spawn(async move {
                loop {
                    let held = match lease.try_hold().await {
                        Ok(held) => held,
                        Err(e) => {
                            tracing::warn!(error = %e, "audit lease could not be read or written");
                            false
                        }
                    };
                    if held != holds.swap(held, Ordering::SeqCst) {
                        tracing::info!(held, "audit lease");
                    }
                    audit_metrics.leader(held);
                    tokio::select! {
                        _ = tokio::time::sleep(every) => {}
                        _ = stop_rx.wait_for(|s| *s) => break,
                    }
                }
                if holds.swap(false, Ordering::SeqCst) {
                    lease.release().await;
                }
                audit_metrics.leader(false);
            })
        };
        let mut events = Events::new(client.clone(), &settings.identity);
        let passes = async {
            loop {
                let next = tokio::time::Instant::now() + settings.interval;
                if holds.load(Ordering::SeqCst) {
                    let policy = policy.current();
                    match super::pass(
                        &client,
                        reviewer,
                        &policy,
                        &settings.scope,
                        settings.budget,
                        &|_, _| {},
                    )
                    .await
                    {
                        Ok(pass) => {
                            tracing::info!(
                                workloads = pass.workloads,
                                images = pass.images,
                                refused = pass.denied,
                                seconds = pass.seconds,
                                "audit pass"
                            );
                            metrics.audit.publish(figures(&pass));
                            if settings.events {
                                let raised = events.after_pass(&pass.rows).await;
                                if raised > 0 {
                                    tracing::info!(raised, "ImageNotPullable events");
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "audit pass failed");
                            metrics.audit.failed_pass();
                        }
                    }
                    tokio::time::sleep_until(next).await;
                } else {
                    // Not the leader: look again soon, so a handover starts the next pass
                    // within a renewal period.
                    tokio::time::sleep(settings.lease_duration / 3).await;
                }
            }
        };
        tokio::select! {
            () = passes => {}
            () = stop => {}
        }
        let _ = stop_tx.send(true);
        let _ = renewing.await;
    }
}

/// The metrics of one pass.
pub(crate) fn figures(pass: &Pass) -> PassFigures {
    let mut totals: BTreeMap<&str, i64> = BTreeMap::new();
    let mut namespaces: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    let mut problems = Vec::new();
    for row in &pass.rows {
        let verdict = row.verdict.as_str();
        *totals.entry(verdict).or_default() += 1;
        *namespaces.entry((&row.namespace, verdict)).or_default() += 1;
        if row.verdict != Verdict::Pullable {
            problems.push(ProblemLabels {
                namespace: row.namespace.clone(),
                kind: row.kind.to_owned(),
                name: row.name.clone(),
                container: row.container.clone(),
                image: row.image.clone(),
                verdict: verdict.to_owned(),
            });
        }
    }
    PassFigures {
        problems,
        totals: totals.into_iter().map(|(v, n)| (v.to_owned(), n)).collect(),
        namespaces: namespaces
            .into_iter()
            .map(|((ns, v), n)| (ns.to_owned(), v.to_owned(), n))
            .collect(),
        workloads: i64::try_from(pass.workloads).unwrap_or(i64::MAX),
        ended: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
        seconds: pass.seconds,
    }
}
