//! What `pullgate review` prints: one line a workload and one an image that is not pullable,
//! or the same as JSON.

use std::borrow::Cow;
use std::io::Write;

use serde::Serialize;

use super::input::Entry;
use crate::admission::Outcome;
use crate::admission::workload::ImageUse;
use crate::policy::Finding;

/// One object's result, as `--json` prints it.
#[derive(Debug, Serialize)]
pub(super) struct Reviewed {
    pub file: String,
    pub document: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<usize>,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// allow, warn, deny or exempt.
    pub decision: &'static str,
    pub allowed: bool,
    pub message: Option<String>,
    pub warnings: Vec<String>,
    pub findings: Vec<Finding>,
    #[serde(skip)]
    pub not_pulled: Vec<ImageUse>,
}

impl Reviewed {
    pub(super) fn new(entry: Entry, outcome: Outcome) -> Reviewed {
        let label = outcome.label();
        let allowed = outcome.decision.allowed();
        let Entry {
            origin, subject, ..
        } = entry;
        Reviewed {
            file: origin.file,
            document: origin.document,
            item: origin.item,
            kind: subject.kind,
            namespace: subject.namespace,
            name: subject.name,
            decision: label,
            allowed,
            message: outcome.decision.message.filter(|_| !allowed),
            warnings: outcome.decision.warnings,
            findings: outcome.findings,
            not_pulled: subject.not_pulled,
        }
    }
}

/// `namespace/name`, or just the name when there is no namespace.
pub(super) fn qualified(namespace: &str, name: &str) -> String {
    let name = if name.is_empty() { "(unnamed)" } else { name };
    if namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}/{name}")
    }
}

/// `text` with control characters escaped: manifests under review are not trusted, and a
/// name or image must not be able to forge output lines or drive the terminal.
pub(super) fn printable(text: &str) -> Cow<'_, str> {
    if text.chars().any(char::is_control) {
        Cow::Owned(text.escape_debug().to_string())
    } else {
        Cow::Borrowed(text)
    }
}

/// The human output: a header per workload, a line per image, then the deny message and the
/// warnings, indented.
pub(super) fn write_text(out: &mut impl Write, reviewed: &[Reviewed]) -> std::io::Result<()> {
    for r in reviewed {
        writeln!(
            out,
            "{} {}: {}",
            printable(&r.kind),
            printable(&qualified(&r.namespace, &r.name)),
            r.decision
        )?;
        for f in &r.findings {
            let reason = if f.reason.is_empty() { "-" } else { &f.reason };
            writeln!(
                out,
                "  {} {:?}  {}  {}  {}",
                f.location,
                f.container,
                printable(&f.image),
                f.verdict,
                printable(reason)
            )?;
        }
        for u in &r.not_pulled {
            writeln!(
                out,
                "  {} {:?}  {}  not probed  imagePullPolicy is Never: the node must already have it",
                u.location,
                u.container,
                printable(&u.image)
            )?;
        }
        for line in r.message.iter().flat_map(|m| m.lines()) {
            writeln!(out, "  {}", printable(line))?;
        }
        for warning in &r.warnings {
            writeln!(out, "  warning: {}", printable(warning))?;
        }
    }
    Ok(())
}
