//! Every figure beside its goal from the issue, printed as it is measured and written to
//! `BENCHMARKS.md` at the end, with the machine it ran on.

use std::fmt::Write as _;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pass,
    Miss,
    /// A figure shown for comparison, with no goal of its own.
    Info,
}

impl Status {
    pub fn of(pass: bool) -> Status {
        if pass { Status::Pass } else { Status::Miss }
    }

    fn label(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Miss => "**MISS**",
            Status::Info => "",
        }
    }
}

pub struct Row {
    pub item: &'static str,
    pub figure: String,
    pub value: String,
    pub goal: String,
    pub status: Status,
}

#[derive(Default)]
pub struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Report {
    /// Records a figure and prints it at once, so a long run shows progress.
    pub fn row(
        &mut self,
        item: &'static str,
        figure: impl Into<String>,
        value: impl Into<String>,
        goal: impl Into<String>,
        status: Status,
    ) {
        let row = Row {
            item,
            figure: figure.into(),
            value: value.into(),
            goal: goal.into(),
            status,
        };
        let mark = match row.status {
            Status::Pass => "pass",
            Status::Miss => "MISS",
            Status::Info => "    ",
        };
        let goal = if row.goal.is_empty() {
            String::new()
        } else {
            format!("   (goal: {})", row.goal)
        };
        println!(
            "  [{mark}] {:<3} {:<58} {:>18}{goal}",
            row.item, row.figure, row.value
        );
        self.rows.push(row);
    }

    pub fn info(
        &mut self,
        item: &'static str,
        figure: impl Into<String>,
        value: impl Into<String>,
    ) {
        self.row(item, figure, value, "", Status::Info);
    }

    /// A line of context printed under the table (how a figure was obtained).
    pub fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        println!("  note: {note}");
        self.notes.push(note);
    }

    pub fn misses(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| r.status == Status::Miss)
            .count()
    }

    pub fn goals(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| r.status != Status::Info)
            .count()
    }

    pub fn markdown(&self, machine: &[(String, String)], command: &str, took: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# pullgate benchmark\n");
        let _ = writeln!(
            out,
            "One full run of `{command}` ({took}). Everything runs on this one machine over \
             loopback: Debian's `docker-registry` (distribution) with TLS and Bearer token auth \
             (the test harness's token server), `pullgate serve` as its own process (the \
             release binary), and the load generator. How each figure is obtained is in the \
             notes below the table, and in docs/benchmark.md.\n"
        );
        let _ = writeln!(out, "## Machine\n");
        let _ = writeln!(out, "| | |\n|---|---|");
        for (k, v) in machine {
            let _ = writeln!(out, "| {k} | {v} |");
        }
        let _ = writeln!(
            out,
            "\n## Results\n\n{} of {} goals met.\n",
            self.goals() - self.misses(),
            self.goals()
        );
        let _ = writeln!(out, "| # | Figure | Result | Goal (issue 6) | |");
        let _ = writeln!(out, "|---|---|---:|---|---|");
        for r in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                r.item,
                r.figure,
                r.value,
                r.goal,
                r.status.label()
            );
        }
        if !self.notes.is_empty() {
            let _ = writeln!(out, "\n## Notes\n");
            for n in &self.notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        out
    }

    pub fn print_summary(&self) {
        println!(
            "\n{} of {} goals met{}",
            self.goals() - self.misses(),
            self.goals(),
            if self.misses() > 0 {
                format!("; missed: {}", self.missed_list())
            } else {
                String::new()
            }
        );
    }

    fn missed_list(&self) -> String {
        self.rows
            .iter()
            .filter(|r| r.status == Status::Miss)
            .map(|r| format!("{} {}", r.item, r.figure))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The machine, as the issue asks: cores, CPU model, memory, kernel, and the versions of what
/// was compared.
pub fn machine(pullgate: &Path) -> Vec<(String, String)> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let mem_kib: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let os = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .unwrap_or("unknown")
        .trim_matches('"')
        .to_owned();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = read("/proc/loadavg");
    vec![
        ("nproc".into(), nproc.to_string()),
        (
            "load average when the run started (1/5/15 min)".into(),
            load.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        ),
        ("CPU".into(), cpu),
        (
            "RAM".into(),
            format!("{:.1} GiB", mem_kib as f64 / 1024.0 / 1024.0),
        ),
        (
            "kernel".into(),
            read("/proc/sys/kernel/osrelease").trim().to_owned(),
        ),
        ("OS".into(), os),
        (
            "pullgate".into(),
            crate::procs::version(pullgate, "--version"),
        ),
        (
            "skopeo".into(),
            crate::procs::version(Path::new("skopeo"), "--version"),
        ),
        (
            "distribution".into(),
            crate::procs::version(Path::new(crate::support::REGISTRY_BINARY), "--version"),
        ),
        (
            "rustc".into(),
            crate::procs::version(Path::new("rustc"), "--version"),
        ),
    ]
}
