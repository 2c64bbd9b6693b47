//! What an admission request asks the nodes to pull: the images of a Pod or of a controller's
//! pod template, the pull secrets and service account the kubelet will use for them, and the
//! platforms the pod may be scheduled on. Pure functions over the request; no I/O.
//!
//! A request that cannot introduce a new image (DELETE, CONNECT, subresources other than
//! `pods/ephemeralcontainers`) yields `Ok(None)` rather than an empty [`Workload`], so callers
//! can tell "nothing to check" from "checked, nothing new".

use std::collections::HashSet;

use kube::core::GroupVersionKind;
use kube::core::admission::Operation;
use serde_json::value::RawValue;

use super::object::{Held, Kind, ObjectBody};
use super::placement::Placement;
use super::podspec::{Container, PodSpec, list};
use super::request::AdmissionRequest;
use crate::oci::platform::Platform;
use crate::policy::Location;

#[cfg(test)]
mod tests;

/// The only subresource through which images are added to an existing Pod (`kubectl debug`).
const EPHEMERAL_CONTAINERS: &str = "ephemeralcontainers";
const NEVER: &str = "Never";
/// The service account the ServiceAccount admission plugin assigns when none is named.
const DEFAULT_SERVICE_ACCOUNT: &str = "default";

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
    let malformed = |source| WorkloadError::Malformed {
        kind: kind.as_str().to_owned(),
        source,
    };
    let object = match object {
        Some(held) => held.read(kind).map_err(malformed)?,
        None => None,
    };
    let old = match old {
        Some(held) if *header.operation == Operation::Update => {
            held.read(kind).map_err(malformed)?
        }
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
