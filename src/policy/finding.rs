//! What the probe found about one image of a workload, as the policy judges it and
//! `pullgate review --json` prints it.

use std::fmt;

use serde::{Serialize, Serializer};

use crate::oci::digest::Digest;
use crate::probe::Verdict;

/// Where in a pod spec an image is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Location {
    Container,
    InitContainer,
    EphemeralContainer,
    ImageVolume,
}

impl Location {
    pub fn as_str(self) -> &'static str {
        match self {
            Location::Container => "container",
            Location::InitContainer => "init container",
            Location::EphemeralContainer => "ephemeral container",
            Location::ImageVolume => "image volume",
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Location {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// What the probe found about one image of the workload under review (serialised as
/// `pullgate review --json` prints it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The image as written in the pod spec.
    pub image: String,
    /// The normalised reference that was probed (`docker.io/library/nginx:1.27`).
    pub reference: String,
    /// The registry as the reference names it (`ImageRef::registry`, `docker.io` for Hub).
    /// Only for matching registry overrides; the reference already says it.
    #[serde(skip)]
    pub registry_host: String,
    /// The container's name.
    pub container: String,
    /// Which list the container is in (or an image volume).
    pub location: Location,
    pub verdict: Verdict,
    /// The probe's one-sentence reason.
    pub reason: String,
    /// The digest of the blob whose refusal decided the verdict.
    pub failed_blob: Option<Digest>,
    /// The registry's own code and message (`DENIED: current image with 3 vulnerabilities…`).
    pub registry_message: Option<String>,
    /// Pullable, but it will not run everywhere the pod may land: `reason` says why (a
    /// single-platform image for another architecture). Admitted with a warning.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub caution: bool,
    /// The host of the nodes' configuration that served the manifest (a mirror), when it
    /// lists hosts for the image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}
