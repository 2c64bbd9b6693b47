//! What `pullgate review` reads: YAML or JSON files (or standard input) of manifests, `List`s
//! and AdmissionReviews, each document turned into something the webhook would review, or
//! skipped with the reason.

use std::fmt;

use kube::core::GroupVersionKind;
use kube::core::admission::Operation;
use serde_json::Value;

use super::ReviewError;
use super::sources::Source;
use crate::admission::Kind;
use crate::admission::request::AdmissionRequest;
use crate::admission::workload::{self, ImageUse, RequestParts, Workload, WorkloadError};
use crate::io::{ReadError, read_limited};

/// Rendered manifests of even a large chart are a few MiB; more is a mistake (or a device).
pub const MAX_INPUT_BYTES: u64 = 64 * 1024 * 1024;

/// How standard input is named in messages and in the JSON output.
pub const STDIN: &str = "<stdin>";

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
pub(super) struct Origin {
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
pub(super) struct Subject {
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
pub(super) enum Target {
    /// A manifest, read as the CREATE request `kubectl apply` would send for it.
    Manifest(Workload),
    /// An AdmissionReview's request, decided as the webhook decides it.
    Review(Box<AdmissionRequest>),
}

/// One object to review.
#[derive(Debug)]
pub(super) struct Entry {
    pub origin: Origin,
    pub subject: Subject,
    pub target: Target,
}

/// A document that is not a workload (Service, ConfigMap, …): reported on stderr, not an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Skipped {
    pub origin: Origin,
    pub api_version: String,
    pub kind: String,
    pub name: String,
}

/// Everything read from the input files, in input order.
#[derive(Debug, Default)]
pub(super) struct Input {
    pub entries: Vec<Entry>,
    pub skipped: Vec<Skipped>,
}

/// Splits `text` into its documents: a JSON value or stream of values, or YAML documents.
/// Empty (null) documents are left out.
pub(super) fn documents(file: &str, text: &str) -> Result<Vec<Value>, ReviewError> {
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
pub(super) fn read_input(
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
    let request = crate::admission::request::parse(&bytes)
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
pub(super) fn group_version_kind(api_version: &str, kind: &str) -> GroupVersionKind {
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

/// Reads every `-f` file (`-` is standard input) into one [`Input`].
pub(super) fn read_files(sources: &[Source], namespace: &str) -> Result<Input, ReviewError> {
    let mut input = Input::default();
    let mut stdin_read = false;
    for source in sources {
        let (file, bytes) = match source {
            Source::Stdin => {
                if std::mem::replace(&mut stdin_read, true) {
                    return Err(ReviewError::StdinTwice);
                }
                (
                    STDIN.to_owned(),
                    read_limited(std::io::stdin().lock(), MAX_INPUT_BYTES, STDIN)?,
                )
            }
            Source::File(path) => {
                let file = path.display().to_string();
                let bytes = std::fs::File::open(path)
                    .map_err(|source| ReadError::Io {
                        what: file.clone(),
                        source,
                    })
                    .and_then(|opened| read_limited(opened, MAX_INPUT_BYTES, &file))?;
                (file, bytes)
            }
        };
        read_input(&file, &bytes, namespace, &mut input)?;
    }
    Ok(input)
}
