//! What an admission request asks the nodes to pull: the images of a Pod or of a controller's
//! pod template, the pull secrets and service account the kubelet will use for them, and the
//! platforms the pod may be scheduled on. Pure functions over the request; no I/O.
//!
//! A request that cannot introduce a new image (DELETE, CONNECT, subresources other than
//! `pods/ephemeralcontainers`) yields `Ok(None)` rather than an empty [`Workload`], so callers
//! can tell "nothing to check" from "checked, nothing new".

use std::borrow::Cow;
use std::collections::{BTreeSet, HashSet};
use std::fmt;

use kube::core::GroupVersionKind;
use kube::core::admission::Operation;
use serde::de::{Deserialize, DeserializeSeed, Deserializer};
use serde_json::value::RawValue;

use crate::platform::Platform;
use crate::podspec::{
    Container, CronJobSpec, NodeSelectorRequirement, NodeSelectorTerm, Object, ObjectMeta, PodSpec,
    PodTemplate, PodTemplateSpec, TemplateSpec, list,
};
use crate::request::AdmissionRequest;

/// The only subresource through which images are added to an existing Pod (`kubectl debug`).
const EPHEMERAL_CONTAINERS: &str = "ephemeralcontainers";
const NEVER: &str = "Never";
/// The service account the ServiceAccount admission plugin assigns when none is named.
const DEFAULT_SERVICE_ACCOUNT: &str = "default";
/// Assumed when a pod pins only an architecture: Linux nodes are what clusters mostly run.
const DEFAULT_OS: &str = "linux";
const ARCH_LABELS: [&str; 2] = ["kubernetes.io/arch", "beta.kubernetes.io/arch"];
const OS_LABELS: [&str; 2] = ["kubernetes.io/os", "beta.kubernetes.io/os"];

/// Why a request could not be read as a workload.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error(
        "unsupported kind {kind} ({group}/{version}): only Pods and the built-in pod controllers carry images pullgate can read"
    )]
    UnsupportedKind {
        group: String,
        version: String,
        kind: String,
    },
    #[error("malformed {kind} in admission request: {source}")]
    Malformed {
        /// The kind as the request names it.
        kind: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("admission request to create or update a {kind} carries no object")]
    MissingObject { kind: Kind },
    #[error("the {kind} lists {count} {what}; at most {max} are read")]
    TooMany {
        kind: Kind,
        what: &'static str,
        /// How many it lists, counted up to one past `max`.
        count: String,
        max: usize,
    },
}

/// Images one pod spec may use (containers, init and ephemeral containers, image volumes),
/// checked before any of them is looked at. Real pods have a few; the apiserver's 3 MiB
/// request limit allows about 70,000.
pub const MAX_IMAGE_USES: usize = 2048;
/// Distinct `imagePullSecrets` names one pod spec may list. Real pods name one or two; a
/// list of thousands would have pullgate read thousands of Secrets.
pub const MAX_PULL_SECRETS: usize = 64;

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

/// Where in a pod spec an image is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Location {
    Container,
    InitContainer,
    EphemeralContainer,
    ImageVolume,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Location::Container => "container",
            Location::InitContainer => "init container",
            Location::EphemeralContainer => "ephemeral container",
            Location::ImageVolume => "image volume",
        })
    }
}

/// One use of an image in a pod spec. The same image used twice appears twice, so that a
/// denial can name every place it is used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageUse {
    /// The reference exactly as written in the spec.
    pub image: String,
    /// The container name, or the volume name for an image volume.
    pub container: String,
    pub location: Location,
    /// `imagePullPolicy` (`pullPolicy` for image volumes) as written or defaulted.
    pub pull_policy: Option<String>,
}

impl ImageUse {
    /// Whether the kubelet will never pull this image, only use what the node already has.
    pub fn never_pulled(&self) -> bool {
        self.pull_policy.as_deref() == Some(NEVER)
    }
}

/// What the kubelet needs, besides the images, to pull for this pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodFacts {
    /// `imagePullSecrets` names in order, empty names dropped, duplicates removed.
    pub image_pull_secrets: Vec<String>,
    /// The service account whose pull secrets the pod also gets.
    pub service_account: String,
    /// True for a controller's pod template, false for a Pod itself.
    pub is_template: bool,
}

/// What an admission request asks the nodes to pull.
#[derive(Clone, Debug)]
pub struct Workload {
    pub kind: Kind,
    /// The request's namespace, else the object's; empty only when neither names one.
    pub namespace: String,
    /// `metadata.name`, or `metadata.generateName` followed by `*`.
    pub name: String,
    pub pod: PodFacts,
    /// Images to check: on UPDATE only those the old object did not already use.
    pub images: Vec<ImageUse>,
    /// New images with pull policy `Never`: not probed, the node must already have them.
    pub skipped: Vec<ImageUse>,
    pub placement: Placement,
}

impl Workload {
    /// The cluster platforms this pod may run on; see [`Placement::platforms`].
    pub fn platforms(&self, cluster: &[Platform]) -> Vec<Platform> {
        self.placement.platforms(cluster)
    }
}

/// The parts of an admission request this module reads, for callers that do not hold an
/// [`AdmissionRequest`].
#[derive(Clone, Copy, Debug)]
pub struct RequestParts<'a> {
    pub kind: &'a GroupVersionKind,
    pub sub_resource: Option<&'a str>,
    pub operation: &'a Operation,
    pub namespace: Option<&'a str>,
    pub object: Option<&'a RawValue>,
    pub old_object: Option<&'a RawValue>,
}

/// Reads the workload of an admission request; `Ok(None)` when the request cannot add an image.
pub fn from_request(req: &AdmissionRequest) -> Result<Option<Workload>, WorkloadError> {
    let header = Header {
        kind: &req.kind,
        sub_resource: req.sub_resource.as_deref(),
        operation: &req.operation,
        namespace: req.namespace.as_deref(),
    };
    read(
        &header,
        req.object.as_ref().map(ObjectBody::held),
        req.old_object.as_ref().map(ObjectBody::held),
    )
}

/// Reads the workload from a request's parts; `Ok(None)` when the request cannot add an image.
pub fn from_parts(parts: &RequestParts<'_>) -> Result<Option<Workload>, WorkloadError> {
    let header = Header {
        kind: parts.kind,
        sub_resource: parts.sub_resource,
        operation: parts.operation,
        namespace: parts.namespace,
    };
    read(
        &header,
        parts.object.map(Held::Raw),
        parts.old_object.map(Held::Raw),
    )
}

/// The fields of a request that say what to read, before any object is.
struct Header<'a> {
    kind: &'a GroupVersionKind,
    sub_resource: Option<&'a str>,
    operation: &'a Operation,
    namespace: Option<&'a str>,
}

impl Header<'_> {
    /// The kind to read, and whether only ephemeral containers count; `None` when the request
    /// cannot add an image. The operation and subresource are looked at before the kind, so a
    /// DELETE or a status update of a kind we do not know is never an error.
    fn what_to_read(&self) -> Result<Option<(Kind, bool)>, WorkloadError> {
        if matches!(self.operation, Operation::Delete | Operation::Connect) {
            return Ok(None);
        }
        let only_ephemeral = match self.sub_resource.filter(|s| !s.is_empty()) {
            None => false,
            Some(EPHEMERAL_CONTAINERS) => true,
            Some(_) => return Ok(None),
        };
        let gvk = self.kind;
        let kind = Kind::from_gvk(gvk).ok_or_else(|| WorkloadError::UnsupportedKind {
            group: gvk.group.clone(),
            version: gvk.version.clone(),
            kind: gvk.kind.clone(),
        })?;
        Ok(Some((kind, only_ephemeral)))
    }
}

/// The workload of a request whose objects are `object` and `old`.
fn read(
    header: &Header<'_>,
    object: Option<Held<'_>>,
    old: Option<Held<'_>>,
) -> Result<Option<Workload>, WorkloadError> {
    let Some((kind, only_ephemeral)) = header.what_to_read()? else {
        return Ok(None);
    };
    let object = match object {
        Some(held) => held.read(kind)?,
        None => None,
    };
    let old = match old {
        Some(held) if *header.operation == Operation::Update => held.read(kind)?,
        _ => None,
    };
    let object = object
        .as_deref()
        .ok_or(WorkloadError::MissingObject { kind })?;
    let no_spec = PodSpec::default();
    let spec = object.spec.as_ref().unwrap_or(&no_spec);
    let old_spec = old.as_deref().and_then(|old| old.spec.as_ref());
    for counted in std::iter::once(spec).chain(old_spec) {
        let count = image_use_count(counted);
        if count > MAX_IMAGE_USES {
            return Err(WorkloadError::TooMany {
                kind,
                what: "images (containers, init containers, ephemeral containers and image volumes)",
                count: count.to_string(),
                max: MAX_IMAGE_USES,
            });
        }
    }

    // Whatever the old object used was admitted then; checking it again would let a registry
    // outage block unrelated edits (scaling, labels) of running workloads.
    let admitted: HashSet<String> = old_spec
        .map(|old| image_uses(old).into_iter().map(|u| u.image).collect())
        .unwrap_or_default();
    let (skipped, images) = image_uses(spec)
        .into_iter()
        .filter(|u| !admitted.contains(&u.image))
        .filter(|u| !only_ephemeral || u.location == Location::EphemeralContainer)
        .partition(ImageUse::never_pulled);

    let meta = &object.meta;
    Ok(Some(Workload {
        kind,
        namespace: header
            .namespace
            .filter(|ns| !ns.is_empty())
            .or(meta.namespace.as_deref())
            .unwrap_or_default()
            .to_owned(),
        name: display_name(meta.name.as_deref(), meta.generate_name.as_deref()),
        pod: pod_facts(spec, kind != Kind::Pod).map_err(|count| WorkloadError::TooMany {
            kind,
            what: "distinct imagePullSecrets names",
            count,
            max: MAX_PULL_SECRETS,
        })?,
        images,
        skipped,
        placement: Placement::from_spec(spec),
    }))
}

/// The cluster platforms a pod with this spec may run on; see [`Placement::platforms`].
pub fn platforms(spec: &PodSpec, cluster: &[Platform]) -> Vec<Platform> {
    Placement::from_spec(spec).platforms(cluster)
}

/// What pullgate reads of an object: its metadata and the pod spec it runs, if it has one.
#[derive(Clone, Debug)]
pub struct Parts {
    meta: ObjectMeta,
    spec: Option<PodSpec>,
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
    pub fn raw(&self) -> Option<&str> {
        match self {
            ObjectBody::Raw(raw) => Some(raw.get()),
            ObjectBody::Read(_) => None,
        }
    }

    fn held(&self) -> Held<'_> {
        match self {
            ObjectBody::Read(parts) => Held::Read(parts),
            ObjectBody::Raw(raw) => Held::Raw(raw),
        }
    }
}

/// An object as a caller holds it: already read (as the request's kind), or JSON.
#[derive(Clone, Copy)]
enum Held<'a> {
    Read(&'a Parts),
    Raw(&'a RawValue),
}

impl<'a> Held<'a> {
    fn read(self, kind: Kind) -> Result<Option<Cow<'a, Parts>>, WorkloadError> {
        Ok(match self {
            Held::Read(parts) => Some(Cow::Borrowed(parts)),
            Held::Raw(raw) => read_object(kind, raw)?.map(Cow::Owned),
        })
    }
}

/// Reads an object of one kind from any deserializer, so that the request parser can read it
/// in the same pass as the envelope; JSON `null` is no object.
#[derive(Clone, Copy, Debug)]
pub struct ObjectSeed(pub Kind);

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
fn read_object(kind: Kind, object: &RawValue) -> Result<Option<Parts>, WorkloadError> {
    // From bytes, like the request body, so both passes share one instance of the decoder.
    let mut de = serde_json::Deserializer::from_slice(object.get().as_bytes());
    ObjectSeed(kind)
        .deserialize(&mut de)
        .and_then(|parts| de.end().map(|()| parts))
        .map_err(|source| WorkloadError::Malformed {
            kind: kind.as_str().to_owned(),
            source,
        })
}

fn display_name(name: Option<&str>, generate_name: Option<&str>) -> String {
    let non_empty = |s: &&str| !s.is_empty();
    match (name.filter(non_empty), generate_name.filter(non_empty)) {
        (Some(name), _) => name.to_owned(),
        (None, Some(generate)) => format!("{generate}*"),
        (None, None) => String::new(),
    }
}

/// Where an image is used, by whom, the image and its pull policy, as the spec holds them.
type Use<'a> = (
    Location,
    &'a Option<String>,
    &'a Option<String>,
    &'a Option<String>,
);

/// Every image the spec uses, containers first, then init and ephemeral containers, then
/// image volumes; entries without an image are left out.
fn image_uses(spec: &PodSpec) -> Vec<ImageUse> {
    fn containers(list: &[Container], location: Location) -> impl Iterator<Item = Use<'_>> {
        list.iter()
            .map(move |c| (location, &c.name, &c.image, &c.image_pull_policy))
    }
    let volumes = list(&spec.volumes).iter().filter_map(|v| {
        let image = v.image.as_ref()?;
        Some((
            Location::ImageVolume,
            &v.name,
            &image.reference,
            &image.pull_policy,
        ))
    });
    containers(list(&spec.containers), Location::Container)
        .chain(containers(
            list(&spec.init_containers),
            Location::InitContainer,
        ))
        .chain(containers(
            list(&spec.ephemeral_containers),
            Location::EphemeralContainer,
        ))
        .chain(volumes)
        .filter_map(|(location, name, image, policy)| {
            let image = image.as_deref().filter(|i| !i.is_empty())?;
            Some(ImageUse {
                image: image.to_owned(),
                container: name.clone().unwrap_or_default(),
                location,
                pull_policy: policy.clone(),
            })
        })
        .collect()
}

/// How many images `spec` uses, counted without looking at any of them.
fn image_use_count(spec: &PodSpec) -> usize {
    list(&spec.containers).len()
        + list(&spec.init_containers).len()
        + list(&spec.ephemeral_containers).len()
        + list(&spec.volumes)
            .iter()
            .filter(|v| v.image.is_some())
            .count()
}

/// The pull secrets and service account of `spec`; `Err` with the count ("more than 64")
/// when it names more than [`MAX_PULL_SECRETS`] distinct secrets.
fn pod_facts(spec: &PodSpec, is_template: bool) -> Result<PodFacts, String> {
    let mut image_pull_secrets: Vec<String> = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    for name in list(&spec.image_pull_secrets).iter().flat_map(|s| &s.name) {
        if !name.is_empty() && seen.insert(name) {
            if image_pull_secrets.len() == MAX_PULL_SECRETS {
                return Err(format!("more than {MAX_PULL_SECRETS}"));
            }
            image_pull_secrets.push(name.clone());
        }
    }
    let non_empty = |s: &&String| !s.is_empty();
    // `serviceAccount` is the deprecated alias the apiserver still mirrors; objects written by
    // older clients may carry only it.
    let service_account = spec
        .service_account_name
        .as_ref()
        .filter(non_empty)
        .or(spec.service_account.as_ref().filter(non_empty))
        .map_or(DEFAULT_SERVICE_ACCOUNT, String::as_str)
        .to_owned();
    Ok(PodFacts {
        image_pull_secrets,
        service_account,
        is_template,
    })
}

/// Which values of one node label a pod accepts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum Values {
    #[default]
    Any,
    Only(BTreeSet<String>),
    Except(BTreeSet<String>),
}

impl Values {
    fn allows(&self, value: &str) -> bool {
        match self {
            Values::Any => true,
            Values::Only(set) => set.contains(value),
            Values::Except(set) => !set.contains(value),
        }
    }

    /// Both constraints hold (expressions within a term, or nodeSelector and a term).
    fn and(self, other: Values) -> Values {
        use Values::*;
        match (self, other) {
            (Any, v) | (v, Any) => v,
            (Only(a), Only(b)) => Only(a.intersection(&b).cloned().collect()),
            (Only(a), Except(b)) | (Except(b), Only(a)) => Only(&a - &b),
            (Except(a), Except(b)) => Except(&a | &b),
        }
    }

    /// Either constraint holds (terms are ORed).
    fn or(self, other: Values) -> Values {
        use Values::*;
        match (self, other) {
            (Any, _) | (_, Any) => Any,
            (Only(a), Only(b)) => Only(&a | &b),
            (Only(a), Except(b)) | (Except(b), Only(a)) => Except(&b - &a),
            (Except(a), Except(b)) => Except(a.intersection(&b).cloned().collect()),
        }
    }

    /// The one value allowed, if exactly one is.
    fn single(&self) -> Option<&str> {
        match self {
            Values::Only(set) if set.len() == 1 => set.first().map(String::as_str),
            _ => None,
        }
    }
}

/// The os and arch a node must have to satisfy one node selector term.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct OsArch {
    os: Values,
    arch: Values,
}

impl OsArch {
    fn constrain(&mut self, key: &str, values: Values) {
        let slot = if OS_LABELS.contains(&key) {
            &mut self.os
        } else if ARCH_LABELS.contains(&key) {
            &mut self.arch
        } else {
            return;
        };
        *slot = std::mem::take(slot).and(values);
    }

    fn and(mut self, other: &OsArch) -> OsArch {
        self.os = self.os.and(other.os.clone());
        self.arch = self.arch.and(other.arch.clone());
        self
    }

    /// `None` for a term with no requirements at all, which matches no node.
    fn from_term(term: &NodeSelectorTerm) -> Option<OsArch> {
        let expressions = list(&term.match_expressions);
        if expressions.is_empty() && list(&term.match_fields).is_empty() {
            return None;
        }
        let mut os_arch = OsArch::default();
        for req in expressions {
            os_arch.constrain(
                req.key.as_deref().unwrap_or_default(),
                requirement_values(req),
            );
        }
        Some(os_arch)
    }

    fn allows(&self, platform: &Platform) -> bool {
        self.os.allows(platform.os()) && self.arch.allows(platform.architecture())
    }
}

fn requirement_values(req: &NodeSelectorRequirement) -> Values {
    let values = || req.values.iter().flatten().cloned().collect();
    match req.operator.as_deref().unwrap_or_default() {
        "In" => Values::Only(values()),
        "NotIn" => Values::Except(values()),
        // The kubelet sets the os and arch labels on every node, so this matches none.
        "DoesNotExist" => Values::Only(BTreeSet::new()),
        _ => Values::Any,
    }
}

/// Where a pod may be scheduled as far as os and architecture go, from its `nodeSelector` and
/// required node affinity. Kept per affinity term so that `linux/amd64 OR windows/arm64` does
/// not also admit `linux/arm64`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// ORed alternatives; empty when no node can satisfy the pod.
    alternatives: Vec<OsArch>,
}

impl Placement {
    /// The constraint a pod spec puts on node os and arch.
    pub fn from_spec(spec: &PodSpec) -> Placement {
        let mut selector = OsArch::default();
        for (key, value) in spec.node_selector.iter().flatten() {
            selector.constrain(key, Values::Only(BTreeSet::from([value.clone()])));
        }
        let terms = spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|n| {
                n.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .map(|s| list(&s.node_selector_terms));
        let alternatives = match terms {
            None => vec![selector],
            Some(terms) => terms
                .iter()
                .filter_map(OsArch::from_term)
                .map(|term| term.and(&selector))
                .collect(),
        };
        Placement { alternatives }
    }

    /// Whether a node of this platform may run the pod; only os and arch are compared, since
    /// nodes carry no variant label.
    pub fn allows(&self, platform: &Platform) -> bool {
        self.alternatives.iter().any(|a| a.allows(platform))
    }

    /// The cluster platforms the pod may run on, in the cluster list's order.
    ///
    /// When none fits and the pod pins a single architecture, that platform is returned
    /// (os `linux` unless it pins another): the pod says where it runs, and an image lacking
    /// it is worth reporting. Otherwise, when the pod excludes every cluster platform, the
    /// cluster list is returned unchanged: the scheduler will not place the pod anyway, and
    /// checking something beats checking nothing.
    pub fn platforms(&self, cluster: &[Platform]) -> Vec<Platform> {
        let fitting: Vec<Platform> = cluster.iter().filter(|p| self.allows(p)).cloned().collect();
        if !fitting.is_empty() {
            return fitting;
        }
        self.pinned().map_or_else(|| cluster.to_vec(), |p| vec![p])
    }

    fn pinned(&self) -> Option<Platform> {
        let union = |pick: fn(&OsArch) -> &Values| {
            self.alternatives
                .iter()
                .map(|a| pick(a).clone())
                .reduce(Values::or)
                .unwrap_or(Values::Only(BTreeSet::new()))
        };
        let arch = union(|a| &a.arch);
        let os = union(|a| &a.os);
        let os = match os.single() {
            Some(os) => os,
            None if os.allows(DEFAULT_OS) => DEFAULT_OS,
            None => return None,
        };
        // Parsing validates label values that are not a usable platform, such as "".
        Platform::parse(&format!("{os}/{}", arch.single()?)).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use serde_json::{Value, json};

    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!("../tests/fixtures/admission/", $name))
        };
    }

    /// A fixture's request, with its object edited by `edit` first.
    fn edited(json: &str, edit: impl FnOnce(&mut Value)) -> AdmissionRequest {
        let mut review: Value = serde_json::from_str(json).expect("fixture is JSON");
        edit(&mut review["request"]["object"]);
        crate::request::parse(&serde_json::to_vec(&review).expect("JSON"))
            .expect("fixture is an AdmissionReview")
    }

    fn request(json: &str) -> AdmissionRequest {
        edited(json, |_| {})
    }

    fn workload(req: &AdmissionRequest) -> Workload {
        from_request(req)
            .expect("fixture is readable")
            .expect("fixture has something to check")
    }

    /// The same review with the objects written before the request's kind, so that the
    /// parser cannot read them in its first pass and keeps them raw.
    fn objects_first(json: &str) -> Vec<u8> {
        let review: Value = serde_json::from_str(json).expect("fixture is JSON");
        let Value::Object(mut request) = review["request"].clone() else {
            panic!("fixture has a request");
        };
        let mut fields = Vec::new();
        for key in ["object", "oldObject"] {
            if let Some(value) = request.remove(key) {
                fields.push(format!("{}:{value}", json!(key)));
            }
        }
        fields.extend(request.iter().map(|(k, v)| format!("{}:{v}", json!(k))));
        format!(
            r#"{{"apiVersion":{},"kind":{},"request":{{{}}}}}"#,
            review["apiVersion"],
            review["kind"],
            fields.join(",")
        )
        .into_bytes()
    }

    #[rstest]
    fn objects_read_in_the_first_pass_or_later_give_the_same_workload(
        #[files("tests/fixtures/admission/*.json")] path: std::path::PathBuf,
    ) {
        let json = std::fs::read_to_string(&path).expect("fixture");
        let in_pass = crate::request::parse(json.as_bytes()).expect("an AdmissionReview");
        let later = crate::request::parse(&objects_first(&json)).expect("an AdmissionReview");
        assert!(
            later.object.as_ref().is_none_or(|o| o.raw().is_some()),
            "{path:?}: an object before its kind is kept raw"
        );
        // Errors point into the JSON; the two bodies are laid out differently.
        let show = |r: &AdmissionRequest| match from_request(r) {
            Ok(workload) => format!("{workload:?}"),
            Err(e) => e
                .to_string()
                .split(" at line ")
                .next()
                .unwrap_or_default()
                .to_owned(),
        };
        assert_eq!(show(&in_pass), show(&later), "{path:?}");
    }

    /// Each use as `"<location> <name>: <image>"`.
    fn uses(list: &[ImageUse]) -> Vec<String> {
        let show = |u: &ImageUse| format!("{} {}: {}", u.location, u.container, u.image);
        list.iter().map(show).collect()
    }

    #[rstest]
    #[case::deployment(fixture!("deployment.json"), Kind::Deployment, "shop/api", "default",
        &["container api: registry.example.com/team/api:3.2.1"])]
    #[case::replicaset(fixture!("replicaset.json"), Kind::ReplicaSet, "shop/api-6d8f7b9c5d",
        "default", &["container api: registry.example.com/team/api:3.2.1"])]
    #[case::statefulset(fixture!("statefulset.json"), Kind::StatefulSet, "shop/db", "db", &[
        "container postgres: registry.example.com/db/postgres:16.4",
        "init container init-perms: registry.example.com/infra/toolbox:1.2",
    ])]
    #[case::daemonset(fixture!("daemonset.json"), Kind::DaemonSet, "monitoring/node-exporter",
        "node-exporter",
        &["container node-exporter: registry.example.com/monitoring/node-exporter:1.8.2"])]
    #[case::job(fixture!("job.json"), Kind::Job, "batch-jobs/report", "default", &[
        "container report: registry.example.com/team/report:2.0",
        "image volume fonts: registry.example.com/assets/fonts:2025.1",
    ])]
    #[case::cronjob_update(fixture!("cronjob.json"), Kind::CronJob, "ops/nightly-backup", "backup",
        &["container backup: registry.example.com/ops/backup:5.2"])]
    #[case::replicationcontroller(fixture!("replicationcontroller.json"),
        Kind::ReplicationController, "legacy/legacy-web", "default",
        &["container web: registry.example.com/legacy/web:0.9"])]
    #[case::podtemplate(fixture!("podtemplate.json"), Kind::PodTemplate, "shop/batch-worker",
        "default", &["container worker: registry.example.com/team/worker@sha256:\
            4f6a8c0e2b4d6f8a0c2e4b6d8f0a2c4e6b8d0f2a4c6e8b0d2f4a6c8e0b2d4f6a"])]
    #[case::dry_run(fixture!("pod-dry-run.json"), Kind::Pod, "default/tmp", "default",
        &["container tmp: registry.example.com/tools/busybox:1.36"])]
    fn reads_every_kind(
        #[case] json: &str,
        #[case] kind: Kind,
        #[case] at: &str,
        #[case] service_account: &str,
        #[case] images: &[&str],
    ) {
        let w = workload(&request(json));
        assert_eq!(w.kind, kind);
        assert_eq!(format!("{}/{}", w.namespace, w.name), at);
        assert_eq!(w.pod.service_account, service_account);
        assert_eq!(w.pod.is_template, kind != Kind::Pod);
        assert_eq!(uses(&w.images), images);
        assert!(w.skipped.is_empty());
    }

    #[test]
    fn pod_create_reads_every_location_and_skips_never() {
        let w = workload(&request(fixture!("pod-create.json")));
        assert_eq!(
            uses(&w.images),
            [
                "container app: registry.example.com/team/app:1.0",
                "init container migrate: registry.example.com/team/migrate:2.3",
                "image volume models: registry.example.com/ml/models:2026.03",
            ]
        );
        assert_eq!(w.images[2].pull_policy.as_deref(), Some("IfNotPresent"));
        assert_eq!(
            uses(&w.skipped),
            ["container cache-warmer: registry.example.com/team/cache-warmer:0.4"]
        );
        let facts = PodFacts {
            image_pull_secrets: vec!["regcred".into(), "team-pull".into()],
            service_account: "checkout".into(),
            is_template: false,
        };
        assert_eq!(w.pod, facts);
        assert_eq!(w.platforms(&cluster(BOTH)), cluster(&["linux/arm64"]));
    }

    #[test]
    fn update_checks_only_new_images() {
        let mut req = request(fixture!("pod-update.json"));
        let w = workload(&req);
        let app = "container app: registry.example.com/team/app:1.1";
        assert_eq!(uses(&w.images), [app]);
        assert!(w.skipped.is_empty(), "unchanged Never images are not new");

        req.old_object = None;
        assert_eq!(
            workload(&req).images.len(),
            3,
            "without oldObject all is new"
        );
    }

    #[test]
    fn update_ignores_images_used_anywhere_in_old_object() {
        let req = edited(fixture!("pod-update.json"), |o| {
            o["spec"]["containers"][0]["image"] = "registry.example.com/ml/models:2026.03".into()
        });
        assert!(workload(&req).images.is_empty());
    }

    #[test]
    fn ephemeral_containers_subresource_checks_only_new_debug_images() {
        let req = request(fixture!("pod-ephemeralcontainers.json"));
        let w = workload(&req);
        let debug = "ephemeral container debugger-k2m9x: registry.example.com/tools/netshoot:0.13";
        assert_eq!(uses(&w.images), [debug]);
        assert_eq!(w.name, "checkout");

        // Containers cannot change through this subresource; only debug images are its business.
        let req = edited(fixture!("pod-ephemeralcontainers.json"), |o| {
            o["spec"]["containers"][0]["image"] = "registry.example.com/x/y:1".into()
        });
        assert_eq!(uses(&workload(&req).images), [debug]);
    }

    #[rstest]
    fn other_subresources_are_ignored(#[values("status", "binding", "exec")] sub: &str) {
        let mut req = request(fixture!("pod-update.json"));
        req.sub_resource = Some(sub.into());
        assert!(from_request(&req).expect("readable").is_none());
    }

    #[test]
    fn delete_and_connect_are_ignored() {
        let mut req = request(fixture!("pod-delete.json"));
        assert!(from_request(&req).expect("readable").is_none());
        req.operation = Operation::Connect;
        assert!(from_request(&req).expect("readable").is_none());
    }

    #[test]
    fn unsupported_kind_is_an_error() {
        let err = from_request(&request(fixture!("rollout.json"))).unwrap_err();
        assert!(
            matches!(&err, WorkloadError::UnsupportedKind { group, version, kind }
                if group == "argoproj.io" && version == "v1alpha1" && kind == "Rollout"),
            "{err:?}"
        );
    }

    #[test]
    fn malformed_object_says_kind_and_problem() {
        let err = from_request(&request(fixture!("malformed.json"))).unwrap_err();
        assert!(matches!(err, WorkloadError::Malformed { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("Pod") && msg.contains("expected a string"),
            "{msg}"
        );
    }

    #[test]
    fn missing_object_on_create_is_an_error() {
        let mut req = request(fixture!("pod-create.json"));
        req.object = None;
        let err = from_request(&req).unwrap_err();
        assert!(
            matches!(err, WorkloadError::MissingObject { kind: Kind::Pod }),
            "{err:?}"
        );
    }

    #[test]
    fn replication_controller_without_template_has_no_images() {
        let req = edited(fixture!("replicationcontroller.json"), |o| {
            let spec = o["spec"].as_object_mut().expect("spec is an object");
            spec.remove("template");
        });
        let w = workload(&req);
        assert!(w.images.is_empty());
        assert_eq!(w.pod.service_account, "default");
    }

    #[test]
    fn generate_name_stands_in_for_missing_name() {
        let req = edited(fixture!("pod-dry-run.json"), |o| {
            o["metadata"]["name"] = Value::Null;
            o["metadata"]["generateName"] = "tmp-".into();
        });
        assert_eq!(workload(&req).name, "tmp-*");
    }

    fn spec(json: Value) -> PodSpec {
        serde_json::from_value(json).expect("valid pod spec")
    }

    #[rstest]
    #[case::deprecated_only(json!({"serviceAccount": "old"}), "old")]
    #[case::both(json!({"serviceAccount": "old", "serviceAccountName": "new"}), "new")]
    #[case::empty(json!({"serviceAccountName": ""}), "default")]
    fn service_account(#[case] mut pod: Value, #[case] expected: &str) {
        pod["containers"] = json!([]);
        assert_eq!(
            pod_facts(&spec(pod), false).unwrap().service_account,
            expected
        );
    }

    #[test]
    fn pull_secrets_keep_order_and_drop_empty_and_duplicates() {
        let secrets = json!([{"name": "b"}, {"name": ""}, {"name": "a"}, {"name": "b"}, {}]);
        let s = spec(json!({"containers": [], "imagePullSecrets": secrets}));
        assert_eq!(pod_facts(&s, true).unwrap().image_pull_secrets, ["b", "a"]);
    }

    #[test]
    fn sixty_four_distinct_pull_secrets_are_read_and_more_are_an_error() {
        let names = |n: usize| -> Value {
            // Every name twice: duplicates do not count towards the cap.
            (0..2 * n)
                .map(|i| json!({"name": format!("s{}", i % n)}))
                .collect()
        };
        let s = spec(json!({"containers": [], "imagePullSecrets": names(MAX_PULL_SECRETS)}));
        assert_eq!(
            pod_facts(&s, false).unwrap().image_pull_secrets.len(),
            MAX_PULL_SECRETS
        );
        let s = spec(json!({"containers": [], "imagePullSecrets": names(MAX_PULL_SECRETS + 1)}));
        assert_eq!(pod_facts(&s, false).unwrap_err(), "more than 64");
    }

    #[test]
    fn too_many_images_are_refused_before_any_is_read() {
        let containers: Vec<Value> = (0..=MAX_IMAGE_USES)
            .map(|i| json!({"name": format!("c{i}"), "image": format!("r.example/i{i}:1")}))
            .collect();
        let req = edited(fixture!("pod-create.json"), |o| {
            o["spec"]["containers"] = Value::Array(containers);
            o["spec"]["initContainers"] = json!([]);
            o["spec"]["volumes"] = json!([]);
        });
        let err = from_request(&req).unwrap_err();
        assert!(
            matches!(
                &err,
                WorkloadError::TooMany {
                    kind: Kind::Pod,
                    max: MAX_IMAGE_USES,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("lists 2049 images"), "{err}");
    }

    const ARCH: &str = "kubernetes.io/arch";
    const OS: &str = "kubernetes.io/os";
    const BOTH: &[&str] = &["linux/amd64", "linux/arm64"];

    fn cluster(list: &[&str]) -> Vec<Platform> {
        let parse = |p: &&str| Platform::parse(p).expect("valid platform");
        list.iter().map(parse).collect()
    }

    /// A pod spec with this nodeSelector and these required node affinity terms.
    fn pod(selector: Value, terms: &[Value]) -> PodSpec {
        let mut pod = json!({"containers": [], "nodeSelector": selector});
        if !terms.is_empty() {
            let required = json!({"nodeSelectorTerms": terms});
            pod["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}});
        }
        spec(pod)
    }

    fn term(expressions: &[Value]) -> Value {
        json!({"matchExpressions": expressions})
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> Value {
        json!({"key": key, "operator": op, "values": values})
    }

    #[rstest]
    #[case::unconstrained(json!({}), vec![], BOTH)]
    #[case::selector_pin(json!({ARCH: "arm64"}), vec![], &["linux/arm64"])]
    #[case::beta_os_label(json!({"beta.kubernetes.io/os": "linux"}), vec![], BOTH)]
    #[case::in_two(json!({}), vec![term(&[expr(ARCH, "In", &["amd64", "arm64"])])], BOTH)]
    #[case::in_intersected(json!({}), vec![term(&[
        expr(ARCH, "In", &["amd64", "arm64"]), expr(ARCH, "In", &["arm64", "s390x"])
    ])], &["linux/arm64"])]
    #[case::not_in(json!({}), vec![term(&[expr(ARCH, "NotIn", &["arm64"])])], &["linux/amd64"])]
    #[case::ored_one_unconstrained(json!({}), vec![
        term(&[expr(ARCH, "In", &["arm64"])]),
        term(&[expr("topology.kubernetes.io/zone", "In", &["eu-1a"])]),
    ], BOTH)]
    #[case::ored_union(json!({}), vec![
        term(&[expr(ARCH, "In", &["arm64"])]),
        term(&[expr(ARCH, "In", &["amd64"]), expr(OS, "In", &["linux"])]),
    ], BOTH)]
    #[case::selector_and_affinity(json!({"beta.kubernetes.io/arch": "arm64"}),
        vec![term(&[expr(ARCH, "In", &["amd64", "arm64"])])], &["linux/arm64"])]
    #[case::pin_outside_cluster(json!({ARCH: "s390x"}), vec![], &["linux/s390x"])]
    #[case::affinity_pin_outside(json!({}), vec![term(&[expr(ARCH, "In", &["ppc64le"])])],
        &["linux/ppc64le"])]
    #[case::pin_both_outside(json!({ARCH: "amd64", OS: "windows"}), vec![], &["windows/amd64"])]
    #[case::os_only_pin_outside(json!({OS: "windows"}), vec![], BOTH)]
    #[case::excludes_all_without_pin(json!({}),
        vec![term(&[expr(ARCH, "NotIn", &["amd64", "arm64"])])], BOTH)]
    #[case::does_not_exist(json!({}), vec![term(&[expr(ARCH, "DoesNotExist", &[])])], BOTH)]
    #[case::empty_term_matches_nothing(json!({}), vec![term(&[]), term(&[
        expr(ARCH, "In", &["arm64"])
    ])], &["linux/arm64"])]
    #[case::empty_selector_value(json!({ARCH: ""}), vec![], BOTH)]
    fn platforms_from_pod(
        #[case] selector: Value,
        #[case] terms: Vec<Value>,
        #[case] expected: &[&str],
    ) {
        assert_eq!(
            platforms(&pod(selector, &terms), &cluster(BOTH)),
            cluster(expected)
        );
    }

    #[test]
    fn variants_in_cluster_list_match_on_os_and_arch() {
        let list = cluster(&["linux/amd64", "linux/arm/v6", "linux/arm/v7"]);
        let arm = platforms(&pod(json!({ARCH: "arm"}), &[]), &list);
        assert_eq!(arm, cluster(&["linux/arm/v6", "linux/arm/v7"]));
    }

    #[test]
    fn alternatives_keep_os_and_arch_together() {
        let linux_amd = term(&[expr(ARCH, "In", &["amd64"]), expr(OS, "In", &["linux"])]);
        let windows_arm = term(&[expr(ARCH, "In", &["arm64"]), expr(OS, "In", &["windows"])]);
        let list = cluster(&["linux/amd64", "linux/arm64", "windows/arm64"]);
        let fitting = platforms(&pod(json!({}), &[linux_amd, windows_arm]), &list);
        assert_eq!(fitting, cluster(&["linux/amd64", "windows/arm64"]));
    }
}
