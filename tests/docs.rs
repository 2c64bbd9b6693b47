//! The documentation, checked against the repository and the program: README.md is a front
//! page whose commands are the ones CI runs, docs/ holds the rest and every page of it is
//! reachable from the README, no relative link or `#anchor` leads nowhere, every `PULLGATE_*`
//! variable the documentation names is one pullgate reads (and every one it reads is
//! documented), and the manifests in examples/ are Kubernetes objects `pullgate review` finds
//! a workload in. Each test lists every problem it finds, with the file and line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use clap::CommandFactory;
use pullgate::cli::Cli;
use serde_json::Value;

/// The longest the README may be and still be read in two minutes.
const README_MAX_LINES: usize = 150;

/// The scripts whose own environment variables (`PULLGATE_FUZZ_SECONDS`, …) the documentation
/// may name besides the program's.
const SCRIPTS: [&str; 3] = ["tests/run", "fuzz/run", "bench/run"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: impl AsRef<Path>) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// README.md and every docs/*.md, relative to the repository.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![PathBuf::from("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("a docs/ directory")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .map(|p| Path::new("docs").join(p.file_name().unwrap()))
        .collect();
    docs.sort();
    assert!(!docs.is_empty(), "docs/ has no pages");
    pages.extend(docs);
    pages
}

/// Fails with every problem found, one a line.
fn assert_none(what: &str, problems: &[String]) {
    assert!(problems.is_empty(), "{what}:\n  {}", problems.join("\n  "));
}

/// What the checks need of a Markdown page.
#[derive(Default)]
struct Page {
    /// (line, target) of every inline link and image, and of reference definitions.
    links: Vec<(usize, String)>,
    /// GitHub's anchors for the page's headings.
    anchors: BTreeSet<String>,
    /// The lines of fenced code blocks, with their line numbers.
    code: Vec<(usize, String)>,
}

fn is_fence(line: &str) -> Option<&'static str> {
    let trimmed = line.trim_start();
    if trimmed.starts_with("```") {
        Some("```")
    } else if trimmed.starts_with("~~~") {
        Some("~~~")
    } else {
        None
    }
}

/// `line` without its inline code spans (a link shown as code is no link).
fn without_code_spans(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        out.push_str(&rest[..start]);
        let ticks = rest[start..].chars().take_while(|&c| c == '`').count();
        let after = &rest[start + ticks..];
        match after.find(&"`".repeat(ticks)) {
            Some(end) => rest = &after[end + ticks..],
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// The targets of the inline links (`[text](target)`, `![alt](target)`) of one line.
fn inline_links(line: &str) -> Vec<String> {
    let line = without_code_spans(line);
    let mut targets = Vec::new();
    let mut rest = line.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let Some(end) = after.find(')') else { break };
        let target = after[..end].trim();
        // `[text](<a b> "title")`: the destination is the first word, or the part in <>.
        let target = match target.strip_prefix('<') {
            Some(t) => t.split('>').next().unwrap_or_default(),
            None => target.split_whitespace().next().unwrap_or_default(),
        };
        targets.push(target.to_owned());
        rest = &after[end + 1..];
    }
    targets
}

/// The text GitHub renders for a heading's Markdown: links become their text, code spans and
/// emphasis lose their markers.
fn rendered(heading: &str) -> String {
    let mut text = String::new();
    let mut rest = heading;
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find("](").map(|c| open + c) else {
            break;
        };
        let Some(end) = rest[close..].find(')').map(|e| close + e) else {
            break;
        };
        text.push_str(&rest[..open]);
        text.push_str(&rest[open + 1..close]);
        rest = &rest[end + 1..];
    }
    text.push_str(rest);
    text.replace(['`', '*'], "")
}

/// GitHub's anchor for a heading: lower case, spaces to hyphens, and every character that is
/// not a letter, a digit, `-` or `_` dropped.
fn slug(heading: &str) -> String {
    rendered(heading)
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

fn parse(text: &str) -> Page {
    let mut page = Page::default();
    let mut fence: Option<&str> = None;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        if let Some(open) = fence {
            if line.trim_start().starts_with(open) {
                fence = None;
            } else {
                page.code.push((number, line.to_owned()));
            }
            continue;
        }
        if let Some(open) = is_fence(line) {
            fence = Some(open);
            continue;
        }
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if (1..=6).contains(&hashes) && line[hashes..].starts_with(' ') {
            let base = slug(line[hashes..].trim().trim_end_matches('#'));
            // A repeated heading gets -1, -2, … as on GitHub.
            let n = seen.entry(base.clone()).or_insert(0);
            let anchor = if *n == 0 {
                base.clone()
            } else {
                format!("{base}-{n}")
            };
            *n += 1;
            page.anchors.insert(anchor);
        }
        // A reference definition: `[name]: target`.
        let trimmed = line.trim_start();
        if let Some(def) = trimmed
            .strip_prefix('[')
            .and_then(|r| r.split_once("]:"))
            .map(|(_, target)| target.trim())
            .filter(|t| !t.is_empty())
        {
            let target = def.split_whitespace().next().unwrap_or_default();
            page.links.push((number, target.to_owned()));
        }
        for target in inline_links(line) {
            page.links.push((number, target));
        }
    }
    page
}

/// `base/rel` with `.` and `..` resolved; None when it leaves the repository.
fn resolve(base: &Path, rel: &str) -> Option<PathBuf> {
    let mut path = PathBuf::new();
    for part in base.join(rel).components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                if !path.pop() {
                    return None;
                }
            }
            Component::Normal(p) => path.push(p),
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(path)
}

fn is_external(target: &str) -> bool {
    target.contains("://") || target.starts_with("mailto:")
}

/// Where a relative link of `page` leads: (the file, relative to the repository, and the
/// anchor, if any).
fn link_target(page: &Path, target: &str) -> Option<(PathBuf, Option<String>)> {
    let (path, anchor) = match target.split_once('#') {
        Some((path, anchor)) => (path, Some(anchor.to_owned())),
        None => (target, None),
    };
    let file = if path.is_empty() {
        page.to_path_buf()
    } else {
        resolve(page.parent().unwrap_or(Path::new("")), path)?
    };
    Some((file, anchor))
}

/// Every relative link of README.md and docs/*.md leads to a file or directory of the
/// repository, and every `#anchor` into a Markdown file to one of its headings.
#[test]
fn relative_links_lead_to_files_and_headings() {
    let mut problems = Vec::new();
    let mut anchors: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
    for page in pages() {
        for (line, target) in parse(&read(&page)).links {
            if is_external(&target) {
                continue;
            }
            let at = format!("{}:{line}: link {target:?}", page.display());
            if target.is_empty() {
                problems.push(format!("{at} is empty"));
                continue;
            }
            let Some((file, anchor)) = link_target(&page, &target) else {
                problems.push(format!("{at} leads out of the repository"));
                continue;
            };
            if !root().join(&file).exists() {
                problems.push(format!("{at}: {} does not exist", file.display()));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            if file.extension().is_none_or(|e| e != "md") {
                problems.push(format!("{at}: an anchor into a file that is not Markdown"));
                continue;
            }
            let known = anchors
                .entry(file.clone())
                .or_insert_with(|| parse(&read(&file)).anchors);
            if !known.contains(&anchor) {
                problems.push(format!(
                    "{at}: {} has no heading with the anchor #{anchor} (it has: {})",
                    file.display(),
                    known.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }
    assert_none("links that lead nowhere", &problems);
}

/// The README is the way in: every page of docs/ is linked from it.
#[test]
fn every_docs_page_is_linked_from_the_readme() {
    let readme = Path::new("README.md");
    let linked: BTreeSet<PathBuf> = parse(&read(readme))
        .links
        .iter()
        .filter(|(_, t)| !is_external(t))
        .filter_map(|(_, t)| link_target(readme, t))
        .map(|(file, _)| file)
        .collect();
    let problems: Vec<String> = pages()
        .into_iter()
        .skip(1)
        .filter(|page| !linked.contains(page))
        .map(|page| format!("{} is not linked from README.md", page.display()))
        .collect();
    assert_none("docs pages nobody can find", &problems);
}

/// The README stays a front page: what pullgate does, the two commands, a try-it and links.
/// Reference text belongs in docs/.
#[test]
fn the_readme_is_a_front_page() {
    let lines = read("README.md").lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines, more than the {README_MAX_LINES} of a front page read in two \
         minutes: move the detail to a page in docs/ and link it"
    );
}

/// The command the README gives for the tests is the one CI runs (.ci/run), and the README
/// gives the command that runs the webhook, verbatim.
#[test]
fn the_readme_commands_are_the_ones_ci_and_users_run() {
    let ci = read(".ci/run");
    let ci_command = ci
        .lines()
        .find_map(|l| l.trim().strip_prefix("exec "))
        .expect(".ci/run runs its command with `exec`")
        .trim()
        .to_owned();
    let code: BTreeSet<String> = parse(&read("README.md"))
        .code
        .into_iter()
        .map(|(_, line)| line.trim().to_owned())
        .collect();
    assert!(
        code.contains(&ci_command),
        "README.md does not give the test command CI runs ({ci_command:?}, from .ci/run) as a \
         line of its own in a code block"
    );
    let serve = "cargo run --release -- serve";
    assert!(
        code.contains(serve),
        "README.md does not give {serve:?} as a line of its own in a code block"
    );
}

/// Every `PULLGATE_…` name in `text`, with its line number.
fn variables(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find("PULLGATE_") {
            let preceded = rest[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            let name = name.trim_end_matches('_');
            if !preceded && name.len() > "PULLGATE".len() {
                found.push((i + 1, name.to_owned()));
            }
        }
    }
    found
}

/// The environment variables clap reads for `pullgate` and its subcommands, with the flag
/// each belongs to.
fn cli_variables() -> BTreeMap<String, String> {
    fn walk(command: &clap::Command, path: &str, out: &mut BTreeMap<String, String>) {
        for arg in command.get_arguments() {
            if let Some(env) = arg.get_env() {
                let flag = arg
                    .get_long()
                    .map(|l| format!("--{l}"))
                    .unwrap_or_else(|| arg.get_id().to_string());
                out.entry(env.to_string_lossy().into_owned())
                    .or_insert(format!("{path} {flag}"));
            }
        }
        for sub in command.get_subcommands() {
            walk(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }
    let mut out = BTreeMap::new();
    walk(&Cli::command(), "pullgate", &mut out);
    out
}

/// Variables `main` reads itself (the log filter), found as string literals in src/main.rs.
fn main_variables() -> BTreeSet<String> {
    let main = read("src/main.rs");
    variables(&main)
        .into_iter()
        .map(|(_, name)| name)
        .filter(|name| main.contains(&format!("\"{name}\"")))
        .collect()
}

/// Every `PULLGATE_*` variable named in README.md and docs/ is read by pullgate (a flag's
/// variable, or one `main` reads) or by one of the scripts the documentation describes; and
/// every variable pullgate reads is named somewhere in the documentation.
#[test]
fn documented_environment_variables_are_the_ones_pullgate_reads() {
    let cli = cli_variables();
    assert!(
        cli.contains_key("PULLGATE_POLICY"),
        "the walk of Cli::command() found no flag variables: {cli:?}"
    );
    let main = main_variables();
    assert!(
        main.contains("PULLGATE_LOG"),
        "src/main.rs no longer reads PULLGATE_LOG as a literal: update this test"
    );
    let scripts: Vec<(&str, String)> = SCRIPTS.iter().map(|s| (*s, read(s))).collect();

    let mut problems = Vec::new();
    let mut documented = BTreeSet::new();
    for page in pages() {
        for (line, name) in variables(&read(&page)) {
            documented.insert(name.clone());
            let by_script = scripts
                .iter()
                .any(|(_, text)| variables(text).iter().any(|(_, n)| *n == name));
            if !cli.contains_key(&name) && !main.contains(&name) && !by_script {
                problems.push(format!(
                    "{}:{line}: {name} is read neither by pullgate (no flag has it, src/main.rs \
                     does not read it) nor by {}",
                    page.display(),
                    SCRIPTS.join(", ")
                ));
            }
        }
    }
    for (name, flag) in &cli {
        if !documented.contains(name) {
            problems.push(format!(
                "{name} ({flag}) is named nowhere in README.md or docs/: document it with its \
                 command (serve's flags are in docs/configuration.md, check's and review's in \
                 docs/cli.md, audit's in docs/audit.md)"
            ));
        }
    }
    for name in &main {
        if !documented.contains(name) {
            problems.push(format!(
                "{name} (read by src/main.rs) is named nowhere in README.md or docs/"
            ));
        }
    }
    assert_none("environment variables of the documentation", &problems);
}

/// Paths the documentation hands to commands (`-f examples/…`, `-d @tests/fixtures/…`) exist.
#[test]
fn files_the_documentation_uses_exist() {
    const ROOTS: [&str; 2] = ["examples/", "tests/fixtures/"];
    let mut problems = Vec::new();
    for page in pages() {
        for (i, line) in read(&page).lines().enumerate() {
            for prefix in ROOTS {
                let mut from = 0;
                while let Some(at) = line[from..].find(prefix).map(|a| a + from) {
                    from = at + prefix.len();
                    let preceded = line[..at].chars().next_back();
                    if preceded.is_some_and(|c| c.is_ascii_alphanumeric() || "/._-".contains(c)) {
                        continue;
                    }
                    let path: String = line[at..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || "/._-".contains(*c))
                        .collect();
                    let path = path.trim_end_matches('.');
                    if !root().join(path).exists() {
                        problems.push(format!(
                            "{}:{}: {path} does not exist",
                            page.display(),
                            i + 1
                        ));
                    }
                }
            }
        }
    }
    assert_none("files named in the documentation", &problems);
}

/// Every file under examples/, relative to the repository.
fn example_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let entry = entry.unwrap();
            let rel = dir.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                walk(&rel, out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut files = Vec::new();
    walk(Path::new("examples"), &mut files);
    files.sort();
    assert!(!files.is_empty(), "examples/ is empty");
    files
}

/// Every file under examples/ is YAML (or JSON) of Kubernetes objects, each with an
/// apiVersion, a kind and a metadata.name.
#[test]
fn the_examples_are_kubernetes_objects() {
    let mut problems = Vec::new();
    for file in example_files() {
        let at = file.display();
        if !file
            .extension()
            .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        {
            problems.push(format!(
                "{at}: examples/ holds manifests only (.yaml, .yml, .json)"
            ));
            continue;
        }
        let docs: Vec<Value> = match serde_saphyr::from_multiple(&read(&file)) {
            Ok(docs) => docs,
            Err(e) => {
                problems.push(format!("{at}: not YAML: {e}"));
                continue;
            }
        };
        let docs: Vec<Value> = docs.into_iter().filter(|d| !d.is_null()).collect();
        if docs.is_empty() {
            problems.push(format!("{at}: no object"));
        }
        for (i, doc) in docs.iter().enumerate() {
            for (field, value) in [
                ("apiVersion", &doc["apiVersion"]),
                ("kind", &doc["kind"]),
                ("metadata.name", &doc["metadata"]["name"]),
            ] {
                if value.as_str().is_none_or(|s| s.trim().is_empty()) {
                    problems.push(format!("{at}: document {}: no {field}", i + 1));
                }
            }
        }
    }
    assert_none("examples that are not Kubernetes objects", &problems);
}

/// `pullgate review` reads every example as at least one workload. Every namespace is exempt
/// in the policy given, so nothing is probed and no registry is asked.
#[test]
fn review_finds_a_workload_in_every_example() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "exemptions:\n  namespaces: [\"*\"]\n").unwrap();
    let mut problems = Vec::new();
    for file in example_files() {
        let mut command = Command::new(env!("CARGO_BIN_EXE_pullgate"));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("PULLGATE_") {
                command.env_remove(name);
            }
        }
        let out = command
            .current_dir(root())
            .args(["review", "--json", "--policy"])
            .arg(&policy)
            .arg("-f")
            .arg(&file)
            .output()
            .unwrap();
        let at = file.display();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            problems.push(format!(
                "{at}: pullgate review exited with {}: {stderr}",
                out.status
            ));
            continue;
        }
        let reviewed: Vec<Value> = match serde_json::from_slice(&out.stdout) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!("{at}: review --json printed no JSON array: {e}"));
                continue;
            }
        };
        if reviewed.is_empty() {
            problems.push(format!("{at}: review found no workload in it: {stderr}"));
        }
        for r in &reviewed {
            if r["decision"] != "exempt" {
                problems.push(format!(
                    "{at}: {} was not exempt, so it was probed",
                    r["name"]
                ));
            }
        }
    }
    assert_none("examples review cannot read", &problems);
}
