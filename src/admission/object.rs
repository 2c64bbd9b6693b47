//! The objects of an admission request as pullgate reads them: which kinds carry pod specs,
//! and the metadata and pod spec of one object, read in the request parser's own pass when
//! its kind came first, or later from the JSON it kept.

use std::borrow::Cow;
use std::fmt;

use kube::core::GroupVersionKind;
use serde::de::{Deserialize, DeserializeSeed, Deserializer};
use serde_json::value::RawValue;

use super::podspec::{
    CronJobSpec, Object, ObjectMeta, PodSpec, PodTemplate, PodTemplateSpec, TemplateSpec,
};

/// The kinds whose pod specs are read, each a stable label for metrics and messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Pod,
    Deployment,
    ReplicaSet,
    StatefulSet,
    DaemonSet,
    Job,
    CronJob,
    ReplicationController,
    PodTemplate,
}

impl Kind {
    /// The kind named by an exact group/version/kind; other versions are no longer served and
    /// the k8s-openapi types describe only these.
    pub fn from_gvk(gvk: &GroupVersionKind) -> Option<Kind> {
        let kind = match (gvk.group.as_str(), gvk.version.as_str(), gvk.kind.as_str()) {
            ("", "v1", "Pod") => Kind::Pod,
            ("apps", "v1", "Deployment") => Kind::Deployment,
            ("apps", "v1", "ReplicaSet") => Kind::ReplicaSet,
            ("apps", "v1", "StatefulSet") => Kind::StatefulSet,
            ("apps", "v1", "DaemonSet") => Kind::DaemonSet,
            ("batch", "v1", "Job") => Kind::Job,
            ("batch", "v1", "CronJob") => Kind::CronJob,
            ("", "v1", "ReplicationController") => Kind::ReplicationController,
            ("", "v1", "PodTemplate") => Kind::PodTemplate,
            _ => return None,
        };
        Some(kind)
    }

    /// The kind's name, e.g. `"Deployment"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::Deployment => "Deployment",
            Kind::ReplicaSet => "ReplicaSet",
            Kind::StatefulSet => "StatefulSet",
            Kind::DaemonSet => "DaemonSet",
            Kind::Job => "Job",
            Kind::CronJob => "CronJob",
            Kind::ReplicationController => "ReplicationController",
            Kind::PodTemplate => "PodTemplate",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What pullgate reads of an object: its metadata and the pod spec it runs, if it has one.
#[derive(Clone, Debug)]
pub struct Parts {
    pub(super) meta: ObjectMeta,
    pub(super) spec: Option<PodSpec>,
}

/// An object of an admission request, as the request parser left it.
#[derive(Clone, Debug)]
pub enum ObjectBody {
    /// Read while the review was parsed, because its kind came first.
    Read(Box<Parts>),
    /// Still JSON: the kind came after it, is not one pullgate reads, or the object did not
    /// read (the error is reported when the workload is read).
    Raw(Box<RawValue>),
}

impl ObjectBody {
    /// The object as JSON text, when it is still JSON.
    #[cfg(test)]
    pub(crate) fn raw(&self) -> Option<&str> {
        match self {
            ObjectBody::Raw(raw) => Some(raw.get()),
            ObjectBody::Read(_) => None,
        }
    }

    pub(super) fn held(&self) -> Held<'_> {
        match self {
            ObjectBody::Read(parts) => Held::Read(parts),
            ObjectBody::Raw(raw) => Held::Raw(raw),
        }
    }
}

/// An object as a caller holds it: already read (as the request's kind), or JSON.
#[derive(Clone, Copy)]
pub(super) enum Held<'a> {
    Read(&'a Parts),
    Raw(&'a RawValue),
}

impl<'a> Held<'a> {
    /// The object as `kind`, read now when it is still JSON.
    pub(super) fn read(self, kind: Kind) -> Result<Option<Cow<'a, Parts>>, serde_json::Error> {
        Ok(match self {
            Held::Read(parts) => Some(Cow::Borrowed(parts)),
            Held::Raw(raw) => read_object(kind, raw)?.map(Cow::Owned),
        })
    }
}

/// Reads an object of one kind from any deserializer, so that the request parser can read it
/// in the same pass as the envelope; JSON `null` is no object.
#[derive(Clone, Copy, Debug)]
pub(super) struct ObjectSeed(pub Kind);

impl<'de> DeserializeSeed<'de> for ObjectSeed {
    type Value = Option<Parts>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<Parts>, D::Error> {
        fn read<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
            d: D,
            split: impl FnOnce(T) -> (Option<ObjectMeta>, Option<PodSpec>),
        ) -> Result<Option<Parts>, D::Error> {
            Ok(Option::<T>::deserialize(d)?.map(|object| {
                let (meta, spec) = split(object);
                Parts {
                    meta: meta.unwrap_or_default(),
                    spec,
                }
            }))
        }
        fn template(t: Option<PodTemplateSpec>) -> Option<PodSpec> {
            t.and_then(|t| t.spec)
        }
        fn templated(o: Object<TemplateSpec>) -> (Option<ObjectMeta>, Option<PodSpec>) {
            (o.metadata, template(o.spec.and_then(|s| s.template)))
        }
        match self.0 {
            Kind::Pod => read(d, |o: Object<PodSpec>| (o.metadata, o.spec)),
            Kind::Deployment
            | Kind::ReplicaSet
            | Kind::StatefulSet
            | Kind::DaemonSet
            | Kind::Job
            | Kind::ReplicationController => read(d, templated),
            Kind::CronJob => read(d, |o: Object<CronJobSpec>| {
                let job = o.spec.and_then(|s| s.job_template).and_then(|j| j.spec);
                (o.metadata, template(job.and_then(|j| j.template)))
            }),
            Kind::PodTemplate => read(d, |o: PodTemplate| (o.metadata, template(o.template))),
        }
    }
}

/// Reads an object still held as JSON.
fn read_object(kind: Kind, object: &RawValue) -> Result<Option<Parts>, serde_json::Error> {
    // From bytes, like the request body, so both passes share one instance of the decoder.
    let mut de = serde_json::Deserializer::from_slice(object.get().as_bytes());
    ObjectSeed(kind)
        .deserialize(&mut de)
        .and_then(|parts| de.end().map(|()| parts))
}
