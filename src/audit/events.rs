//! `Warning ImageNotPullable` Events on workloads whose image the audit found not pullable,
//! one per workload, image and verdict: the Event's name is derived from the three, so a
//! second replica, a restart or the next pass finds it already there (409) and raises nothing
//! new while the image stays broken.

use std::collections::HashSet;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use sha2::{Digest as _, Sha256};

use super::Row;
use crate::probe::Verdict;

pub(crate) const REASON: &str = "ImageNotPullable";
const COMPONENT: &str = "pullgate";

/// Raises Events for rows that turned not pullable.
pub(crate) struct Events {
    client: kube::Client,
    instance: String,
    /// (uid, image, verdict) raised and still not pullable at the last pass.
    raised: HashSet<(String, String, Verdict)>,
}

impl Events {
    pub(crate) fn new(client: kube::Client, instance: &str) -> Self {
        Events {
            client,
            instance: instance.to_owned(),
            raised: HashSet::new(),
        }
    }

    /// Raises one Event for each row not pullable that was not already; forgets rows that
    /// are pullable again. Returns how many were created.
    pub(crate) async fn after_pass(&mut self, rows: &[Row]) -> usize {
        let mut now_broken = HashSet::new();
        let mut created = 0;
        for row in rows
            .iter()
            .filter(|r| r.verdict != Verdict::Pullable && !r.uid.is_empty())
        {
            let key = (row.uid.clone(), row.image.clone(), row.verdict);
            if !self.raised.contains(&key) {
                match self.raise(row).await {
                    Ok(true) => created += 1,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, namespace = %row.namespace, name = %row.name,
                            "could not record the ImageNotPullable event");
                        continue;
                    }
                }
            }
            now_broken.insert(key);
        }
        self.raised = now_broken;
        created
    }

    /// Creates the Event; `false` when it already exists.
    async fn raise(&self, row: &Row) -> Result<bool, kube::Error> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), &row.namespace);
        let now = Timestamp::now();
        let message = format!(
            "image {:?} of container {:?} {}: {}",
            row.image,
            row.container,
            phrase(row.verdict),
            row.reason
        );
        let event = Event {
            metadata: ObjectMeta {
                name: Some(event_name(row)),
                namespace: Some(row.namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some(row.api_version.clone()),
                kind: Some(row.kind.to_owned()),
                name: Some(row.name.clone()),
                namespace: Some(row.namespace.clone()),
                uid: Some(row.uid.clone()),
                ..ObjectReference::default()
            },
            reason: Some(REASON.to_owned()),
            message: Some(message.chars().take(1024).collect()),
            type_: Some("Warning".to_owned()),
            source: Some(EventSource {
                component: Some(COMPONENT.to_owned()),
                host: None,
            }),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            count: Some(1),
            action: Some("Audit".to_owned()),
            reporting_component: Some(COMPONENT.to_owned()),
            reporting_instance: Some(self.instance.chars().take(128).collect()),
            ..Event::default()
        };
        match api.create(&PostParams::default(), &event).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

fn phrase(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Pullable => "is pullable",
        Verdict::Blocked => "is blocked by the registry",
        Verdict::Unauthorized => "is unauthorized",
        Verdict::NotFound => "was not found",
        Verdict::Invalid => "is invalid",
        Verdict::Unavailable => "could not be checked",
    }
}

/// `<workload>.<16 hex of sha256(uid, image, verdict)>`, a valid Event name.
fn event_name(row: &Row) -> String {
    let mut hash = Sha256::new();
    for part in [row.uid.as_str(), row.image.as_str(), row.verdict.as_str()] {
        hash.update(part.len().to_le_bytes());
        hash.update(part.as_bytes());
    }
    let digest = hash.finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let name: String = row.name.chars().take(200).collect();
    format!("{}.{hex}", name.trim_end_matches('*'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::DecisionKind;

    #[test]
    fn names_are_stable_per_workload_image_and_verdict() {
        let row = |image: &str, verdict| Row {
            namespace: "shop".into(),
            kind: "Deployment",
            name: "api".into(),
            container: "app".into(),
            image: image.into(),
            verdict,
            reason: String::new(),
            decision: DecisionKind::Deny,
            uid: "u-1".into(),
            api_version: "apps/v1".into(),
        };
        let a = event_name(&row("r.io/a:1", Verdict::NotFound));
        assert_eq!(a, event_name(&row("r.io/a:1", Verdict::NotFound)));
        assert_ne!(a, event_name(&row("r.io/a:1", Verdict::Blocked)));
        assert_ne!(a, event_name(&row("r.io/b:1", Verdict::NotFound)));
        assert!(a.starts_with("api.") && a.len() == "api.".len() + 16);
    }
}
