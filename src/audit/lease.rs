//! The audit's leader election: one `coordination.k8s.io/v1` Lease, held by the replica that
//! audits, renewed well within its duration, taken over only once it has expired, and given up
//! on shutdown (holder cleared, as client-go's `ReleaseOnCancel` does) so another replica takes
//! over at once. Writes carry the Lease's resourceVersion, so two replicas racing for it cannot
//! both win.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease as LeaseObject, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};

/// One Lease and who this replica is.
pub(crate) struct Lease {
    api: Api<LeaseObject>,
    name: String,
    identity: String,
    duration: Duration,
}

impl Lease {
    pub(crate) fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        Lease {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration,
        }
    }

    /// Holds the Lease after this call, or not: created when missing, renewed when held,
    /// taken when its holder let it expire or gave it up.
    pub(crate) async fn try_hold(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let Some(current) = self.api.get_opt(&self.name).await? else {
            let lease = self.object(None, now, now, 0);
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let mine = holder == self.identity;
        let expired = spec.renew_time.as_ref().is_none_or(|renewed| {
            let lasts = SignedDuration::from_secs(spec.lease_duration_seconds.unwrap_or(0).into());
            renewed.0 + lasts < now
        });
        if !mine && !holder.is_empty() && !expired {
            return Ok(false);
        }
        let acquired = if mine {
            spec.acquire_time.map_or(now, |t| t.0)
        } else {
            now
        };
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let lease = self.object(
            current.metadata.resource_version.clone(),
            acquired,
            now,
            transitions,
        );
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            // Someone else wrote it first.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up if this replica holds it.
    pub(crate) async fn release(&self) {
        let Ok(Some(current)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let spec = current.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        let mut lease = current;
        lease.spec = Some(LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            ..spec
        });
        if let Err(e) = self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            tracing::info!(error = %e, lease = %self.name, "could not give the audit lease up; it expires on its own");
        }
    }

    fn object(
        &self,
        resource_version: Option<String>,
        acquired: Timestamp,
        renewed: Timestamp,
        transitions: i32,
    ) -> LeaseObject {
        LeaseObject {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                resource_version,
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(
                    i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX),
                ),
                acquire_time: Some(MicroTime(acquired)),
                renew_time: Some(MicroTime(renewed)),
                lease_transitions: Some(transitions),
                ..LeaseSpec::default()
            }),
        }
    }
}
