//! The policy's words: the deny message, the warnings and the audit annotation, each bounded
//! (deny messages end up in events and terminals), with control characters from registries
//! removed. kube-apiserver passes every warning on whole while all of a response's warnings
//! fit in 4096 characters; past that it cuts each to 256 and then drops the rest. So warnings
//! may be long where they need to be, and are kept within that total here. A line that must be
//! cut loses the middle of its long URLs first, then its middle, never its end, where the
//! registry's own words are.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::{Action, DecisionKind, Finding};
use crate::oci::digest::Digest;
use crate::probe::Verdict;

const PREFIX: &str = "pullgate: ";

/// Longest warning: long enough for a registry's message after a presigned URL.
pub(super) const MAX_WARNING_CHARS: usize = 1024;

/// All of one response's warnings together, below the apiserver's 4096 (the review's other
/// warnings, such as a credential provider's, share it).
pub(super) const WARNINGS_BUDGET: usize = 3072;

/// What the apiserver cuts each warning to once the total is over 4096: below that, a line
/// keeps nothing useful.
const MIN_WARNING_CHARS: usize = 256;

/// Warnings listed at most; past this many, the rest are counted.
pub(super) const MAX_WARNINGS: usize = 12;

/// A URL longer than this is shown with its middle cut.
const MAX_URL_CHARS: usize = 96;

/// Images listed in a deny message; the rest are counted.
const MAX_LISTED: usize = 20;

/// Longest line about one image in a deny message.
pub(super) const MAX_LINE_CHARS: usize = 512;

/// An image or container name longer than this is shown cut, in deny lines and warnings.
const MAX_NAME_CHARS: usize = 160;

/// Entries in the `images` audit annotation, and the longest text in one.
const MAX_AUDIT_IMAGES: usize = 20;

const MAX_AUDIT_CHARS: usize = 256;

pub(super) fn deny_message(denied: &[&Finding], total: usize) -> String {
    let mut message = format!(
        "{PREFIX}{} of {} cannot be pulled:",
        denied.len(),
        count(total, "image")
    );
    for finding in denied.iter().take(MAX_LISTED) {
        message.push_str("\n- ");
        message.push_str(&shorten(describe(finding), MAX_LINE_CHARS));
    }
    if denied.len() > MAX_LISTED {
        let _ = write!(message, "\n- and {} more", denied.len() - MAX_LISTED);
    }
    message
}

pub(super) fn warnings(warned: &[&Finding]) -> Vec<String> {
    let listed = warned.len().min(MAX_WARNINGS);
    let full: Vec<String> = warned[..listed]
        .iter()
        .map(|f| format!("{PREFIX}{}", describe(f)))
        .collect();
    // Each line gets an equal share of the budget, and no more than it needs: short lines
    // leave their share to long ones.
    let mut lines = Vec::with_capacity(listed + 1);
    let mut left = WARNINGS_BUDGET;
    for (i, line) in full.into_iter().enumerate() {
        let share = (left / (listed - i)).clamp(MIN_WARNING_CHARS, MAX_WARNING_CHARS);
        let line = shorten(line, share);
        left = left.saturating_sub(line.chars().count());
        lines.push(line);
    }
    if warned.len() > MAX_WARNINGS {
        let more = count(warned.len() - MAX_WARNINGS, "more image");
        lines.push(format!("{PREFIX}{more} with problems not listed"));
    }
    lines
}

/// One line a user can act on: where the image is used, what is wrong with it, and the
/// registry's own words last, so that shortening the line shortens those first.
fn describe(finding: &Finding) -> String {
    // A hostile image string (up to the request size) must not push the verdict and the
    // reason off the line.
    let mut line = format!(
        "{} {:?}: image {:?} {}",
        finding.location,
        shorten(finding.container.clone(), MAX_NAME_CHARS),
        shorten(finding.image.clone(), MAX_NAME_CHARS),
        phrase(finding.verdict)
    );
    let detail = detail(finding);
    if !detail.is_empty() {
        line.push_str(": ");
        line.push_str(&detail);
    }
    line
}

fn phrase(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Pullable => "is pullable",
        Verdict::Blocked => "is blocked by the registry",
        Verdict::Unauthorized => "is unauthorized (check imagePullSecrets)",
        Verdict::NotFound => "was not found",
        Verdict::Invalid => "is invalid",
        Verdict::Unavailable => "could not be checked (registry unavailable)",
    }
}

/// The reason, with the failing blob and the registry's message added when it lacks them
/// (the probe's reasons usually carry both).
pub(super) fn detail(finding: &Finding) -> String {
    let reason = clean(finding.reason.trim());
    let mut parts = Vec::new();
    if let Some(blob) = finding.failed_blob.as_ref().map(Digest::short)
        && !reason.contains(&blob)
    {
        parts.push(format!("blob {blob}"));
    }
    let registry = finding.registry_message.as_deref().map(clean);
    let registry = registry.filter(|m| !m.is_empty() && !reason.contains(m.as_str()));
    if !reason.is_empty() {
        parts.push(reason);
    }
    parts.extend(registry);
    parts.join(": ")
}

#[derive(Serialize)]
struct AuditImage {
    image: String,
    container: String,
    verdict: Verdict,
    action: Action,
    /// The host of the nodes' configuration that answered (a mirror).
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<String>,
}

pub(super) fn audit(kind: DecisionKind, judged: &[(&Finding, Action)]) -> BTreeMap<String, String> {
    let mut audit = BTreeMap::from([("decision".to_owned(), kind.as_str().to_owned())]);
    if judged.is_empty() {
        return audit;
    }
    let images: Vec<AuditImage> = judged
        .iter()
        .take(MAX_AUDIT_IMAGES)
        .map(|(f, action)| AuditImage {
            image: shorten(f.reference.clone(), MAX_AUDIT_CHARS),
            container: shorten(f.container.clone(), MAX_AUDIT_CHARS),
            verdict: f.verdict,
            action: *action,
            host: f.host.as_ref().map(|h| shorten(h.clone(), MAX_AUDIT_CHARS)),
        })
        .collect();
    // Serialising strings and unit enums cannot fail; an empty annotation would be harmless.
    audit.insert(
        "images".to_owned(),
        serde_json::to_string(&images).unwrap_or_default(),
    );
    if judged.len() > MAX_AUDIT_IMAGES {
        let omitted = judged.len() - MAX_AUDIT_IMAGES;
        audit.insert("images_omitted".to_owned(), omitted.to_string());
    }
    audit
}

fn count(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

/// Registry text on one line: a warning with a control character is dropped by the apiserver.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `text` in at most `max` characters: long URLs lose their middle always (a presigned URL's
/// signature helps no one), then the text
/// loses its middle (keeping its start, which says where and what, and its end, which is the
/// registry's answer), with `…` where something was cut.
pub(super) fn shorten(text: String, max: usize) -> String {
    let text = if text.contains("://") {
        shorten_urls(&text)
    } else {
        text
    };
    let len = text.chars().count();
    if len <= max {
        return text;
    }
    let keep = max.saturating_sub(1);
    let head = keep * 2 / 5;
    let tail = keep - head;
    let mut cut: String = text.chars().take(head).collect();
    cut.push('…');
    cut.extend(text.chars().skip(len - tail));
    cut
}

/// Each `http://` or `https://` word longer than [`MAX_URL_CHARS`] with its middle (the
/// signature of a presigned URL, usually) replaced by `…`.
fn shorten_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest
        .find("http://")
        .into_iter()
        .chain(rest.find("https://"))
        .min()
    {
        out.push_str(&rest[..at]);
        let url_len = rest[at..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '>' | ')'))
            .unwrap_or(rest.len() - at);
        let url = &rest[at..at + url_len];
        let chars = url.chars().count();
        if chars > MAX_URL_CHARS {
            let (head, tail) = (MAX_URL_CHARS / 2, MAX_URL_CHARS / 3);
            out.extend(url.chars().take(head));
            out.push('…');
            out.extend(url.chars().skip(chars - tail));
        } else {
            out.push_str(url);
        }
        rest = &rest[at + url_len..];
    }
    out.push_str(rest);
    out
}
