//! Where a pod may run: the node platforms its `kubernetes.io/arch` and `kubernetes.io/os`
//! node selector and required node affinity allow, among the cluster's.

use std::collections::BTreeSet;

use super::podspec::{NodeSelectorRequirement, NodeSelectorTerm, PodSpec, list};
use crate::oci::platform::Platform;

/// Assumed when a pod pins only an architecture: Linux nodes are what clusters mostly run.
const DEFAULT_OS: &str = "linux";

const ARCH_LABELS: [&str; 2] = ["kubernetes.io/arch", "beta.kubernetes.io/arch"];

const OS_LABELS: [&str; 2] = ["kubernetes.io/os", "beta.kubernetes.io/os"];

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
