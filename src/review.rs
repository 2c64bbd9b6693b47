//! `pullgate review`: the webhook's answer for manifests before `kubectl apply`, offline from a
//! cluster, for CI pipelines.
//!
//! Input files hold AdmissionReviews, decided exactly as the webhook decides them, or plain
//! manifests, each reviewed as a CREATE of its kind. Both come in YAML or JSON, one or many
//! documents, `kind: List` included. All input is read and checked before the first probe, so
//! a document that cannot be read fails the run (exit 2) without a single registry request.
//!
//! There is no API server, so pull secrets and ServiceAccounts cannot be read: only the node
//! credentials of `--docker-config` are used, and the user is told so when it matters.

use std::borrow::Cow;
use std::fmt;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use futures_util::future::join_all;
use kube::core::GroupVersionKind;
use kube::core::admission::Operation;
use serde::Serialize;
use serde_json::Value;

use crate::admission::{Outcome, Reviewer, ReviewerConfig};
use crate::cache::CacheOptions;
use crate::cli::{CliError, RegistryArgs, load_keyring};
use crate::client::RegistryClient;
use crate::metrics::Metrics;
use crate::policy::{Finding, Policy, PolicyError};
use crate::reload::Reloading;
use crate::request::AdmissionRequest;
use crate::workload::{self, ImageUse, Kind, RequestParts, Workload, WorkloadError};

/// Rendered manifests of even a large chart are a few MiB; more is a mistake (or a device).
pub const MAX_INPUT_BYTES: u64 = 64 * 1024 * 1024;

/// How standard input is named in messages and in the JSON output.
pub const STDIN: &str = "<stdin>";

/// Flags of `pullgate review`; every one has an environment variable.
#[derive(Debug, Args)]
pub struct ReviewArgs {
    /// Manifests or AdmissionReviews to review: YAML or JSON, one or many documents
    /// (`---`), `kind: List` included; `-` reads standard input. Repeatable.
    #[arg(
        short = 'f',
        long = "filename",
        alias = "file",
        value_name = "FILE",
        required = true,
        value_delimiter = ',',
        env = "PULLGATE_REVIEW_FILES"
    )]
    pub files: Vec<PathBuf>,
    /// Namespace of manifests whose metadata names none (as `kubectl apply -n`).
    #[arg(
        short = 'n',
        long,
        value_name = "NAMESPACE",
        default_value = "default",
        env = "PULLGATE_NAMESPACE"
    )]
    pub namespace: String,
    /// Policy file (YAML). Without it, the embedded default policy.
    #[arg(long, value_name = "FILE", env = "PULLGATE_POLICY")]
    pub policy: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, env = "PULLGATE_JSON")]
    pub json: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Deadline for each workload's review (e.g. 10s, 1m); an image not probed by then gets
    /// the policy's action for `unavailable`.
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = humantime::parse_duration, env = "PULLGATE_TIMEOUT")]
    pub timeout: Duration,
}

/// Why `pullgate review` could not review its input; every one is exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("cannot read {file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file} is larger than {MAX_INPUT_BYTES} bytes")]
    TooLarge { file: String },
    #[error("{file} is not UTF-8 text: {source}")]
    NotText {
        file: String,
        #[source]
        source: std::str::Utf8Error,
    },
    /// `document` counts from 1 and leaves out empty documents, as the YAML parser does.
    #[error("{file}: document {document}: {source}")]
    Document {
        file: String,
        document: usize,
        #[source]
        source: DocumentError,
    },
    #[error("standard input (-f -) can be read only once")]
    StdinTwice,
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Setup(#[from] CliError),
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

/// What is wrong with one document of an input file.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    /// A YAML syntax error, rendered with its line and column.
    #[error("{0}")]
    Yaml(String),
    #[error("invalid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("expected a Kubernetes object (a mapping with apiVersion and kind), found {found}")]
    NotAnObject { found: &'static str },
    #[error("the object has no {field}")]
    MissingField { field: &'static str },
    #[error("items[{index}]: {source}")]
    Item {
        index: usize,
        #[source]
        source: Box<DocumentError>,
    },
    /// The object is of a workload kind but does not read as one.
    #[error("malformed {kind}: {source}")]
    Malformed {
        kind: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Workload(WorkloadError),
    /// The text of the answer the webhook would give, which names the problem.
    #[error("{0}")]
    AdmissionReview(String),
}

/// Where a reviewed object came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub file: String,
    /// Counts from 1, empty documents left out.
    pub document: usize,
    /// The index in a List's `items`, counting from 0.
    pub item: Option<usize>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} document {}", self.file, self.document)?;
        match self.item {
            Some(index) => write!(f, " items[{index}]"),
            None => Ok(()),
        }
    }
}

/// What one reviewed object is about, for the output; read before any probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// Whether the pod names `imagePullSecrets`, which cannot be read offline.
    pub names_pull_secrets: bool,
    /// Images with `imagePullPolicy: Never`: never probed.
    pub not_pulled: Vec<ImageUse>,
}

impl Subject {
    fn of(workload: &Workload) -> Subject {
        Subject {
            kind: workload.kind.as_str().to_owned(),
            namespace: workload.namespace.clone(),
            name: workload.name.clone(),
            names_pull_secrets: !workload.pod.image_pull_secrets.is_empty(),
            not_pulled: workload.skipped.clone(),
        }
    }
}

/// What is decided for one object.
#[derive(Debug)]
pub enum Target {
    /// A manifest, read as the CREATE request `kubectl apply` would send for it.
    Manifest(Workload),
    /// An AdmissionReview's request, decided as the webhook decides it.
    Review(Box<AdmissionRequest>),
}

/// One object to review.
#[derive(Debug)]
pub struct Entry {
    pub origin: Origin,
    pub subject: Subject,
    pub target: Target,
}

/// A document that is not a workload (Service, ConfigMap, …): reported on stderr, not an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub origin: Origin,
    pub api_version: String,
    pub kind: String,
    pub name: String,
}

/// Everything read from the input files, in input order.
#[derive(Debug, Default)]
pub struct Input {
    pub entries: Vec<Entry>,
    pub skipped: Vec<Skipped>,
}

/// Splits `text` into its documents: a JSON value or stream of values, or YAML documents.
/// Empty (null) documents are left out.
pub fn documents(file: &str, text: &str) -> Result<Vec<Value>, ReviewError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if !text.trim_start().starts_with(['{', '[']) {
        return yaml_documents(file, text);
    }
    let mut values = Vec::new();
    for value in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
        match value {
            Ok(Value::Null) => {}
            Ok(value) => values.push(value),
            // JSON documents separated by `---` are YAML; if it is not that either, the JSON
            // error is the one that describes what the user wrote.
            Err(e) => {
                return yaml_documents(file, text).map_err(|_| ReviewError::Document {
                    file: file.to_owned(),
                    document: values.len() + 1,
                    source: DocumentError::Json(e),
                });
            }
        }
    }
    Ok(values)
}

fn yaml_documents(file: &str, text: &str) -> Result<Vec<Value>, ReviewError> {
    let options = serde_saphyr::options! {
        // A rendered chart can hold a few thousand documents; the size is bounded by the caller.
        budget: serde_saphyr::budget! {
            max_documents: 100_000,
        },
    };
    let mut reader = text.as_bytes();
    let mut values = Vec::new();
    // Document by document, so that an error names the document it is in.
    for value in serde_saphyr::read_with_options::<_, Value>(&mut reader, options) {
        match value {
            Ok(Value::Null) => {}
            Ok(value) => values.push(value),
            Err(e) => {
                let rendered = e
                    .render_with_options(serde_saphyr::render_options! { source_name: Some(file) });
                return Err(ReviewError::Document {
                    file: file.to_owned(),
                    document: values.len() + 1,
                    source: DocumentError::Yaml(
                        rendered
                            .strip_prefix("error: ")
                            .unwrap_or(&rendered)
                            .to_owned(),
                    ),
                });
            }
        }
    }
    Ok(values)
}

/// Reads one input file's documents into `input`; `namespace` is used for manifests whose
/// metadata names none.
pub fn read_input(
    file: &str,
    bytes: &[u8],
    namespace: &str,
    input: &mut Input,
) -> Result<(), ReviewError> {
    let text = std::str::from_utf8(bytes).map_err(|source| ReviewError::NotText {
        file: file.to_owned(),
        source,
    })?;
    for (index, value) in documents(file, text)?.into_iter().enumerate() {
        let origin = Origin {
            file: file.to_owned(),
            document: index + 1,
            item: None,
        };
        add_document(input, origin, value, namespace).map_err(|source| ReviewError::Document {
            file: file.to_owned(),
            document: index + 1,
            source,
        })?;
    }
    Ok(())
}

/// The `(apiVersion, kind)` of an object.
fn type_of(value: &Value) -> Result<(&str, &str), DocumentError> {
    let Value::Object(object) = value else {
        return Err(DocumentError::NotAnObject {
            found: json_type(value),
        });
    };
    let field = |field: &'static str| {
        object
            .get(field)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or(DocumentError::MissingField { field })
    };
    Ok((field("apiVersion")?, field("kind")?))
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn add_document(
    input: &mut Input,
    origin: Origin,
    value: Value,
    namespace: &str,
) -> Result<(), DocumentError> {
    let (api_version, kind) = type_of(&value)?;
    if kind == "AdmissionReview" {
        let entry = admission_review(origin, &value)?;
        input.entries.push(entry);
        return Ok(());
    }
    let is_list = kind.ends_with("List") && value.get("items").is_some_and(Value::is_array);
    if !is_list {
        return add_object(input, origin, value, namespace);
    }
    // A typed list (`DeploymentList`, as the API serves it) leaves kind and apiVersion out of
    // its items; `kind: List` (what kubectl prints) has them in every item.
    let item_type = (kind != "List").then(|| {
        (
            api_version.to_owned(),
            kind.trim_end_matches("List").to_owned(),
        )
    });
    let Value::Object(mut list) = value else {
        return Ok(());
    };
    let Some(Value::Array(items)) = list.remove("items") else {
        return Ok(());
    };
    for (index, mut item) in items.into_iter().enumerate() {
        if let (Some((api_version, kind)), Value::Object(fields)) = (&item_type, &mut item) {
            fields
                .entry("apiVersion")
                .or_insert_with(|| Value::String(api_version.clone()));
            fields
                .entry("kind")
                .or_insert_with(|| Value::String(kind.clone()));
        }
        let origin = Origin {
            item: Some(index),
            ..origin.clone()
        };
        add_object(input, origin, item, namespace).map_err(|source| DocumentError::Item {
            index,
            source: Box::new(source),
        })?;
    }
    Ok(())
}

/// An AdmissionReview, read exactly as the webhook reads a request body.
fn admission_review(origin: Origin, value: &Value) -> Result<Entry, DocumentError> {
    // The webhook reads JSON bytes; a YAML review goes through the same door.
    let bytes = serde_json::to_vec(value).map_err(DocumentError::Json)?;
    let request = crate::request::parse(&bytes)
        .map_err(|answer| DocumentError::AdmissionReview(answer.result.message))?;
    // Only for the output: a request the webhook cannot read is a decision (deny), not an
    // input error, so a failure here falls back to what the request itself says.
    let subject = match workload::from_request(&request) {
        Ok(Some(workload)) => Subject::of(&workload),
        _ => Subject {
            kind: request.kind.kind.clone(),
            namespace: request.namespace.clone().unwrap_or_default(),
            name: request.name.clone(),
            names_pull_secrets: false,
            not_pulled: Vec::new(),
        },
    };
    Ok(Entry {
        origin,
        subject,
        target: Target::Review(Box::new(request)),
    })
}

/// The group/version/kind named by `apiVersion` and `kind`.
pub fn group_version_kind(api_version: &str, kind: &str) -> GroupVersionKind {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    GroupVersionKind::gvk(group, version, kind)
}

fn add_object(
    input: &mut Input,
    origin: Origin,
    value: Value,
    namespace: &str,
) -> Result<(), DocumentError> {
    let (api_version, kind) = type_of(&value)?;
    let gvk = group_version_kind(api_version, kind);
    if Kind::from_gvk(&gvk).is_none() {
        input.skipped.push(Skipped {
            origin,
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
            name: value
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        });
        return Ok(());
    }
    let namespace = value
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .filter(|ns| !ns.is_empty())
        .unwrap_or(namespace);
    let object = serde_json::value::to_raw_value(&value).map_err(DocumentError::Json)?;
    let parts = RequestParts {
        kind: &gvk,
        sub_resource: None,
        operation: &Operation::Create,
        namespace: Some(namespace),
        object: Some(&object),
        old_object: None,
    };
    // A CREATE of a known kind always yields a workload; `None` would mean nothing to check.
    let read = workload::from_parts(&parts).map_err(|e| match e {
        // The workload module words this for admission requests; here it is a manifest.
        WorkloadError::Malformed { kind, source } => DocumentError::Malformed { kind, source },
        other => DocumentError::Workload(other),
    })?;
    if let Some(workload) = read {
        input.entries.push(Entry {
            origin,
            subject: Subject::of(&workload),
            target: Target::Manifest(workload),
        });
    }
    Ok(())
}

/// Reads `reader` whole, refusing more than [`MAX_INPUT_BYTES`].
fn read_bounded(reader: impl Read, file: &str) -> Result<Vec<u8>, ReviewError> {
    crate::reload::read_limited(reader, MAX_INPUT_BYTES)
        .map_err(|source| ReviewError::Read {
            file: file.to_owned(),
            source,
        })?
        .ok_or_else(|| ReviewError::TooLarge {
            file: file.to_owned(),
        })
}

/// Reads every `-f` file (`-` is standard input) into one [`Input`].
pub fn read_files(files: &[PathBuf], namespace: &str) -> Result<Input, ReviewError> {
    let mut input = Input::default();
    let mut stdin_read = false;
    for path in files {
        let (file, bytes) = if path.as_os_str() == "-" {
            if std::mem::replace(&mut stdin_read, true) {
                return Err(ReviewError::StdinTwice);
            }
            (
                STDIN.to_owned(),
                read_bounded(std::io::stdin().lock(), STDIN)?,
            )
        } else {
            let file = path.display().to_string();
            let opened = std::fs::File::open(path).map_err(|source| ReviewError::Read {
                file: file.clone(),
                source,
            })?;
            let bytes = read_bounded(opened, &file)?;
            (file, bytes)
        };
        read_input(&file, &bytes, namespace, &mut input)?;
    }
    Ok(input)
}

/// One object's result, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct Reviewed {
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
    fn new(entry: Entry, outcome: Outcome) -> Reviewed {
        let label = outcome.label();
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
            allowed: outcome.decision.allowed,
            message: outcome
                .decision
                .message
                .filter(|_| !outcome.decision.allowed),
            warnings: outcome.decision.warnings,
            findings: outcome.findings,
            not_pulled: subject.not_pulled,
        }
    }
}

/// The decision for one entry, within `budget`.
async fn decide(
    reviewer: &Reviewer,
    policy: &Policy,
    target: &Target,
    budget: Duration,
) -> Outcome {
    match target {
        Target::Manifest(workload) => reviewer.decide_workload(workload, policy, budget).await,
        Target::Review(request) => reviewer.decide(request, policy, budget).await,
    }
}

/// Runs `pullgate review`: exit 0 when every workload is admitted (warnings included), 1 when
/// any is refused; errors are exit 2.
pub async fn run(args: ReviewArgs) -> Result<ExitCode, ReviewError> {
    let policy = match &args.policy {
        Some(path) => Policy::load(path)?,
        None => Policy::default(),
    };
    let input = read_files(&args.files, &args.namespace)?;
    let policy = Arc::new(Reloading::fixed("policy", policy));
    let reviewer = Reviewer::new(ReviewerConfig {
        registry: RegistryClient::new(args.registry.client_options()?).map_err(CliError::from)?,
        secrets: None,
        node: Arc::new(load_keyring(&args.registry.docker_configs)?),
        cache: CacheOptions::default(),
        policy: policy.clone(),
        metrics: Arc::new(Metrics::new()),
        probe_timeout: args.timeout,
    });
    let policy = policy.current();

    for skipped in &input.skipped {
        eprintln!(
            "pullgate: {}: skipped {} {} ({}): not a kind pullgate reviews",
            skipped.origin,
            printable(&skipped.kind),
            printable(&qualified("", &skipped.name)),
            printable(&skipped.api_version),
        );
    }
    if input.entries.iter().any(|e| e.subject.names_pull_secrets) {
        eprintln!(
            "pullgate: imagePullSecrets cannot be read without a cluster: only --docker-config \
             credentials are used, so the cluster's answer may differ"
        );
    }
    if input.entries.is_empty() {
        eprintln!("pullgate: no workloads to review");
    }

    let outcomes = join_all(
        input
            .entries
            .iter()
            .map(|entry| decide(&reviewer, &policy, &entry.target, args.timeout)),
    )
    .await;
    let reviewed: Vec<Reviewed> = input
        .entries
        .into_iter()
        .zip(outcomes)
        .map(|(entry, outcome)| Reviewed::new(entry, outcome))
        .collect();

    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &reviewed).map_err(std::io::Error::other)?;
        writeln!(out)?;
    } else {
        write_text(&mut out, &reviewed)?;
    }
    out.flush()?;
    Ok(if reviewed.iter().all(|r| r.allowed) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `namespace/name`, or just the name when there is no namespace.
fn qualified(namespace: &str, name: &str) -> String {
    let name = if name.is_empty() { "(unnamed)" } else { name };
    if namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}/{name}")
    }
}

/// `text` with control characters escaped: manifests under review are not trusted, and a
/// name or image must not be able to forge output lines or drive the terminal.
fn printable(text: &str) -> Cow<'_, str> {
    if text.chars().any(char::is_control) {
        Cow::Owned(text.escape_debug().to_string())
    } else {
        Cow::Borrowed(text)
    }
}

/// The human output: a header per workload, a line per image, then the deny message and the
/// warnings, indented.
pub fn write_text(out: &mut impl Write, reviewed: &[Reviewed]) -> std::io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn read(file: &str, text: &str) -> Result<Input, ReviewError> {
        let mut input = Input::default();
        read_input(file, text.as_bytes(), "default", &mut input)?;
        Ok(input)
    }

    /// `(kind, namespace/name, document, item)` of every entry.
    fn summary(input: &Input) -> Vec<(String, String, usize, Option<usize>)> {
        input
            .entries
            .iter()
            .map(|e| {
                (
                    e.subject.kind.clone(),
                    qualified(&e.subject.namespace, &e.subject.name),
                    e.origin.document,
                    e.origin.item,
                )
            })
            .collect()
    }

    fn row(
        kind: &str,
        name: &str,
        document: usize,
        item: Option<usize>,
    ) -> (String, String, usize, Option<usize>) {
        (kind.to_owned(), name.to_owned(), document, item)
    }

    const MULTI: &str = r#"
# a leading comment
apiVersion: apps/v1
kind: Deployment
metadata:
  name: api
  namespace: shop
spec:
  template:
    spec:
      imagePullSecrets: [{name: regcred}, {name: regcred}]
      containers:
        - {name: api, image: "registry.example.com/team/api:1.0"}
        - {name: cache, image: redis:7, imagePullPolicy: Never}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec: {ports: [{port: 80}]}
---
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly}
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          initContainers: [{name: setup, image: busybox}]
          containers: [{name: job, image: "registry.example.com/team/job:2"}]
"#;

    #[test]
    fn yaml_documents_become_create_requests_and_other_kinds_are_skipped() {
        let input = read("multi.yaml", MULTI).unwrap();
        // The empty document between two `---` is not counted.
        assert_eq!(
            summary(&input),
            vec![
                row("Deployment", "shop/api", 1, None),
                row("CronJob", "default/nightly", 3, None),
            ]
        );
        let deployment = &input.entries[0];
        assert!(deployment.subject.names_pull_secrets);
        assert_eq!(deployment.subject.not_pulled.len(), 1);
        assert_eq!(deployment.subject.not_pulled[0].image, "redis:7");
        let Target::Manifest(workload) = &deployment.target else {
            panic!("a manifest is reviewed as a workload");
        };
        assert_eq!(workload.kind, Kind::Deployment);
        assert_eq!(workload.pod.image_pull_secrets, vec!["regcred"]);
        assert_eq!(workload.images.len(), 1);
        let Target::Manifest(cronjob) = &input.entries[1].target else {
            panic!("a manifest is reviewed as a workload");
        };
        let images: Vec<&str> = cronjob.images.iter().map(|u| u.image.as_str()).collect();
        assert_eq!(images, ["registry.example.com/team/job:2", "busybox"]);
        assert!(!input.entries[1].subject.names_pull_secrets);

        assert_eq!(
            input.skipped,
            vec![Skipped {
                origin: Origin {
                    file: "multi.yaml".into(),
                    document: 2,
                    item: None
                },
                api_version: "v1".into(),
                kind: "Service".into(),
                name: "api".into(),
            }]
        );
    }

    #[test]
    fn the_namespace_flag_applies_only_where_metadata_names_none() {
        let mut input = Input::default();
        read_input("m.yaml", MULTI.as_bytes(), "ci", &mut input).unwrap();
        assert_eq!(input.entries[0].subject.namespace, "shop");
        assert_eq!(input.entries[1].subject.namespace, "ci");
    }

    #[test]
    fn list_items_are_reviewed_one_by_one() {
        let text = r#"
apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: Pod
    metadata: {name: web, namespace: shop}
    spec: {containers: [{name: web, image: nginx}]}
  - apiVersion: v1
    kind: ConfigMap
    metadata: {name: settings}
  - apiVersion: apps/v1
    kind: StatefulSet
    metadata: {name: db}
    spec: {template: {spec: {containers: [{name: db, image: postgres:16}]}}}
"#;
        let input = read("list.yaml", text).unwrap();
        assert_eq!(
            summary(&input),
            vec![
                row("Pod", "shop/web", 1, Some(0)),
                row("StatefulSet", "default/db", 1, Some(2)),
            ]
        );
        assert_eq!(input.skipped.len(), 1);
        assert_eq!(input.skipped[0].kind, "ConfigMap");
        assert_eq!(input.skipped[0].origin.item, Some(1));
        assert_eq!(
            input.skipped[0].origin.to_string(),
            "list.yaml document 1 items[1]"
        );
    }

    #[test]
    fn a_typed_list_lends_its_kind_to_its_items() {
        let text = r#"{"apiVersion": "apps/v1", "kind": "DaemonSetList", "metadata": {},
            "items": [{"metadata": {"name": "agent", "namespace": "ops"},
                       "spec": {"template": {"spec": {"containers": [{"name": "a", "image": "agent:1"}]}}}}]}"#;
        let input = read("ds.json", text).unwrap();
        assert_eq!(
            summary(&input),
            vec![row("DaemonSet", "ops/agent", 1, Some(0))]
        );
    }

    #[test]
    fn json_objects_and_json_streams_are_read() {
        let pod = |name: &str| {
            format!(
                r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}"}},"spec":{{"containers":[{{"name":"c","image":"nginx"}}]}}}}"#
            )
        };
        let input = read("one.json", &format!("\u{feff}  {}\n", pod("a"))).unwrap();
        assert_eq!(summary(&input), vec![row("Pod", "default/a", 1, None)]);
        let input = read("stream.json", &format!("{}\n{}", pod("a"), pod("b"))).unwrap();
        assert_eq!(
            summary(&input),
            vec![
                row("Pod", "default/a", 1, None),
                row("Pod", "default/b", 2, None)
            ]
        );
        // JSON documents separated by `---` are YAML, and read as such.
        let input = read("docs.yaml", &format!("{}\n---\n{}", pod("a"), pod("b"))).unwrap();
        assert_eq!(input.entries.len(), 2);
    }

    #[test]
    fn kinds_are_mapped_by_group_and_version() {
        let gvk = group_version_kind("apps/v1", "Deployment");
        assert_eq!((gvk.group.as_str(), gvk.version.as_str()), ("apps", "v1"));
        let gvk = group_version_kind("v1", "Pod");
        assert_eq!((gvk.group.as_str(), gvk.version.as_str()), ("", "v1"));
        // Versions the apiserver no longer serves, CRDs and core kinds are not workloads.
        let text = r#"
apiVersion: extensions/v1beta1
kind: Deployment
metadata: {name: old}
---
apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {name: canary}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop}
"#;
        let input = read("other.yaml", text).unwrap();
        assert!(input.entries.is_empty());
        let kinds: Vec<(&str, &str)> = input
            .skipped
            .iter()
            .map(|s| (s.api_version.as_str(), s.kind.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("extensions/v1beta1", "Deployment"),
                ("argoproj.io/v1alpha1", "Rollout"),
                ("v1", "Namespace")
            ]
        );
    }

    #[test]
    fn an_admission_review_in_yaml_is_read_as_the_webhook_reads_it() {
        let text = r#"
apiVersion: admission.k8s.io/v1
kind: AdmissionReview
request:
  uid: 0f7c
  kind: {group: "", version: v1, kind: Pod}
  resource: {group: "", version: v1, resource: pods}
  namespace: shop
  operation: CREATE
  userInfo: {username: ci}
  object:
    apiVersion: v1
    kind: Pod
    metadata: {generateName: web-}
    spec: {containers: [{name: web, image: nginx}]}
"#;
        let input = read("review.yaml", text).unwrap();
        assert_eq!(summary(&input), vec![row("Pod", "shop/web-*", 1, None)]);
        let Target::Review(request) = &input.entries[0].target else {
            panic!("an AdmissionReview is decided as a review");
        };
        assert_eq!(request.uid, "0f7c");
    }

    #[test]
    fn unreadable_documents_name_the_file_and_the_document() {
        let error = |file: &str, text: &str| match read(file, text) {
            Err(ReviewError::Document {
                file,
                document,
                source,
            }) => (file, document, source.to_string()),
            other => panic!("expected a document error, got {other:?}"),
        };
        let (file, document, message) = error(
            "bad.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\nkind: [unclosed\n",
        );
        assert_eq!((file.as_str(), document), ("bad.yaml", 2));
        assert!(message.contains("line 5"), "{message}");

        let (_, document, message) = error("s.json", "{\"kind\": \"Pod\"}\n{\"kind\": }");
        assert_eq!(document, 2);
        assert!(message.starts_with("invalid JSON"), "{message}");

        let (_, _, message) = error("scalar.yaml", "just text\n");
        assert!(message.contains("found a string"), "{message}");
        let (_, _, message) = error("seq.yaml", "- a\n- b\n");
        assert!(message.contains("found a list"), "{message}");
        let (_, _, message) = error("nokind.yaml", "apiVersion: v1\nmetadata: {}\n");
        assert_eq!(message, "the object has no kind");

        let (_, _, message) = error(
            "malformed.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: 5}\n",
        );
        assert!(message.starts_with("malformed Pod: "), "{message}");

        let (_, document, message) = error(
            "list.yaml",
            "---\napiVersion: v1\nkind: List\nitems: [{apiVersion: v1, kind: Pod, spec: {containers: x}}]\n",
        );
        assert_eq!(document, 1);
        assert!(message.starts_with("items[0]: malformed Pod"), "{message}");

        let (_, _, message) = error(
            "review.yaml",
            "apiVersion: admission.k8s.io/v1\nkind: AdmissionReview\nrequest: {uid: 5}\n",
        );
        assert!(message.contains("not a valid"), "{message}");

        assert!(matches!(
            read("bin", "\u{0}").map(|i| i.entries.len()),
            Err(ReviewError::Document { .. })
        ));
        let mut input = Input::default();
        assert!(matches!(
            read_input("latin1.yaml", b"kind: \xe9", "default", &mut input),
            Err(ReviewError::NotText { .. })
        ));
    }

    #[test]
    fn text_output_escapes_what_the_manifest_controls() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: \"web\\nPod x/y: allow\"}\n\
                    spec: {containers: [{name: \"c\\u001b[31m\", image: \"UPPER\\rX\", imagePullPolicy: Never}]}\n";
        let entry = read("evil.yaml", text).unwrap().entries.remove(0);
        let outcome = Outcome {
            kind: "Pod",
            decision: crate::policy::Decision {
                allowed: true,
                ..Default::default()
            },
            findings: Vec::new(),
        };
        let mut out = Vec::new();
        write_text(&mut out, &[Reviewed::new(entry, outcome)]).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert_eq!(out.lines().count(), 2, "{out}");
        assert!(
            out.starts_with("Pod default/web\\nPod x/y: allow: allow\n"),
            "{out}"
        );
        assert!(!out.contains('\u{1b}') && !out.contains('\r'), "{out}");
    }

    #[test]
    fn empty_input_has_nothing_to_review() {
        for text in ["", "\n", "---\n", "# only a comment\n---\n...\n"] {
            let input = read("empty.yaml", text).unwrap();
            assert!(
                input.entries.is_empty() && input.skipped.is_empty(),
                "{text:?}"
            );
        }
    }
}
