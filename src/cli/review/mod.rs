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

mod input;
mod output;
mod sources;
#[cfg(test)]
mod tests;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use futures_util::future::join_all;

pub use input::{DocumentError, MAX_INPUT_BYTES, STDIN};

use super::registry::{RegistryArgs, SetupError};
use crate::admission::{Outcome, Reviewer};
use crate::io::ReadError;
use crate::policy::{Policy, PolicyError};
use crate::reload::Reloading;
use input::{Target, read_files};
use output::{Reviewed, printable, qualified, write_text};

/// Flags of `pullgate review`; every one has an environment variable.
#[derive(Debug, Args)]
pub struct ReviewArgs {
    /// Manifests or AdmissionReviews to review: YAML or JSON, one or many documents
    /// (`---`), `kind: List` included; `-` reads standard input; a directory is read
    /// recursively (its .yaml, .yml and .json files). Repeatable, or comma-separated (also in
    /// the environment variable).
    #[arg(
        short = 'f',
        long = "filename",
        alias = "file",
        value_name = "FILE|DIR|-",
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
    /// Succeed when the input holds no workload pullgate reviews; without it that is an error
    /// (exit 2), so an empty `helm template | pullgate review -f -` does not pass silently.
    #[arg(long, env = "PULLGATE_ALLOW_EMPTY")]
    pub allow_empty: bool,
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
    #[error(transparent)]
    Read(#[from] ReadError),
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
    #[error("cannot read directory {dir}: {source}")]
    Directory {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("more than {limit} files to read: name the manifests' directory, not a whole tree")]
    TooManyFiles { limit: usize },
    #[error(
        "no workloads to review in {inputs} (no Pod or pod controller found); --allow-empty accepts that"
    )]
    NoWorkloads { inputs: String },
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

impl ReviewError {
    /// The output's reader went away: stop quietly.
    pub fn is_closed_output(&self) -> bool {
        matches!(self, ReviewError::Output(e) if super::is_closed_pipe(e))
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
/// any is refused; errors (no workload found included, unless `--allow-empty`) are exit 2.
pub async fn run(args: ReviewArgs) -> Result<ExitCode, ReviewError> {
    let policy = match &args.policy {
        Some(path) => Policy::load(path)?,
        None => Policy::default(),
    };
    let input = read_files(&sources::expand(&args.files)?, &args.namespace)?;
    if input.entries.is_empty() && !args.allow_empty {
        let inputs: Vec<String> = args.files.iter().map(|f| f.display().to_string()).collect();
        return Err(ReviewError::NoWorkloads {
            inputs: inputs.join(", "),
        });
    }
    let policy = Arc::new(Reloading::fixed("policy", policy));
    let reviewer = args.registry.reviewer(policy.clone(), None, args.timeout)?;
    let policy = policy.current();

    for skipped in &input.skipped {
        super::say(format_args!(
            "{}: skipped {} {} ({}): not a kind pullgate reviews",
            skipped.origin,
            printable(&skipped.kind),
            printable(&qualified("", &skipped.name)),
            printable(&skipped.api_version),
        ));
    }
    if input.entries.iter().any(|e| e.subject.names_pull_secrets) {
        super::say(format_args!(
            "imagePullSecrets cannot be read without a cluster: only --docker-config \
             credentials are used, so the cluster's answer may differ"
        ));
    }
    if input.entries.is_empty() {
        super::say(format_args!("no workloads to review (--allow-empty)"));
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
