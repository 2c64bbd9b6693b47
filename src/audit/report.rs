//! A pass written for people (a table, problems first) or for tools (JSON, YAML: the whole
//! [`Pass`], every row).

use std::io::{self, Write};

use super::{Pass, Row};
use crate::policy::DecisionKind;
use crate::probe::Verdict;

/// Widest a table cell is shown; the JSON has everything.
const MAX_CELL: usize = 60;

/// The table: one line per image that is not pullable (or whose workload would be refused),
/// then a summary line. Every image pullable is said in one line.
pub fn write_table(out: &mut impl Write, pass: &Pass) -> io::Result<()> {
    let problems: Vec<&Row> = pass
        .rows
        .iter()
        .filter(|r| r.verdict != Verdict::Pullable || r.decision == DecisionKind::Deny)
        .collect();
    if !problems.is_empty() {
        let header = [
            "NAMESPACE",
            "KIND/NAME",
            "CONTAINER",
            "IMAGE",
            "VERDICT",
            "DECISION",
            "REASON",
        ];
        let cells: Vec<[String; 7]> = problems
            .iter()
            .map(|r| {
                [
                    r.namespace.clone(),
                    format!("{}/{}", r.kind, r.name),
                    r.container.clone(),
                    r.image.clone(),
                    r.verdict.as_str().to_owned(),
                    r.decision.as_str().to_owned(),
                    r.reason.clone(),
                ]
                .map(|c| cell(&c))
            })
            .collect();
        let mut widths = header.map(str::len);
        for row in &cells {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |out: &mut dyn Write, row: &[&str]| -> io::Result<()> {
            let last = row.len() - 1;
            for (i, c) in row.iter().enumerate() {
                if i == last {
                    writeln!(out, "{c}")?;
                } else {
                    write!(out, "{c:<width$}  ", width = widths[i])?;
                }
            }
            Ok(())
        };
        line(out, &header)?;
        for row in &cells {
            line(out, &row.each_ref().map(String::as_str))?;
        }
        writeln!(out)?;
    }
    writeln!(
        out,
        "{} workloads, {} distinct images, {} not pullable, {} workloads would be refused now ({:.1}s)",
        pass.workloads,
        pass.images,
        problems
            .iter()
            .filter(|r| r.verdict != Verdict::Pullable)
            .count(),
        pass.denied,
        pass.seconds
    )?;
    for unreadable in &pass.unreadable {
        writeln!(out, "not read: {}", cell(unreadable))?;
    }
    Ok(())
}

pub fn write_json(out: &mut impl Write, pass: &Pass) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, pass).map_err(io::Error::other)?;
    writeln!(out)
}

pub fn write_yaml(out: &mut impl Write, pass: &Pass) -> io::Result<()> {
    let yaml = serde_saphyr::to_string(pass).map_err(io::Error::other)?;
    out.write_all(yaml.as_bytes())
}

/// One line, printable, at most [`MAX_CELL`] characters.
fn cell(text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if clean.chars().count() <= MAX_CELL {
        clean
    } else {
        let mut cut: String = clean.chars().take(MAX_CELL - 1).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, verdict: Verdict, decision: DecisionKind) -> Row {
        Row {
            namespace: "shop".into(),
            kind: "Deployment",
            name: name.into(),
            container: "app".into(),
            image: format!("r.io/{name}:1"),
            verdict,
            reason: "manifest unknown\nto the registry".into(),
            decision,
            uid: String::new(),
            api_version: "apps/v1".into(),
        }
    }

    #[test]
    fn the_table_lists_problems_and_sums_up() {
        let pass = Pass {
            rows: vec![
                row("ok", Verdict::Pullable, DecisionKind::Allow),
                row("gone", Verdict::NotFound, DecisionKind::Deny),
            ],
            workloads: 2,
            denied: 1,
            images: 2,
            ..Pass::default()
        };
        let mut out = Vec::new();
        write_table(&mut out, &pass).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("NAMESPACE"), "{text}");
        assert!(text.contains("Deployment/gone"), "{text}");
        assert!(!text.contains("Deployment/ok"), "{text}");
        assert!(text.contains("manifest unknown to the registry"), "{text}");
        assert!(
            text.contains(
                "2 workloads, 2 distinct images, 1 not pullable, 1 workloads would be refused"
            ),
            "{text}"
        );
        let mut yaml = Vec::new();
        write_yaml(&mut yaml, &pass).unwrap();
        let yaml = String::from_utf8(yaml).unwrap();
        assert!(yaml.contains("verdict: not_found"), "{yaml}");
        assert!(yaml.contains("decision: deny"), "{yaml}");
    }
}
