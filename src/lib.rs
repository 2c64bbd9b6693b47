//! pullgate decides whether container images can really be pulled, the way the kubelet would
//! pull them: it speaks the OCI Distribution API itself, answers every endpoint's auth
//! challenge, resolves indexes to a platform and probes one byte of every blob.
//!
//! # Layout
//! - [`reference`]: image references, parsed and normalised like the kubelet does.
//! - [`platform`]: `os/arch[/variant]` and containerd's matching rules.
//! - [`keyring`]: docker config files and the kubelet's credential matching.
//! - [`challenge`]: `WWW-Authenticate` parsing.
//! - [`token`]: the Bearer token flow and its cache.
//! - [`client`]: the HTTP layer that attaches auth per endpoint and follows redirects safely.
//! - [`digest`]: content digests, validated before they reach a URL.
//! - [`manifest`]: manifests, indexes, media types and digests.
//! - [`verdict`]: verdict classes and how registry answers map onto them.
//! - [`probe`]: the deep probe that ties these together.
//! - [`request`], [`workload`], [`podspec`]: what an AdmissionReview asks the nodes to pull.
//! - [`admission`], [`policy`], [`cache`], [`server`]: the webhook's decision and its serving.
//! - [`cli`]: the `pullgate` command line.
//! - [`review`]: `pullgate review`, the webhook's answer for manifests, offline.
#![forbid(unsafe_code)]

pub use server::{Config, Listeners, run};

pub mod admission;
pub mod cache;
pub mod challenge;
pub mod cli;
pub mod client;
pub mod connection;
pub mod digest;
pub mod egress;
pub mod fds;
pub mod intake;
pub mod keyring;
pub mod manifest;
pub mod metrics;
pub mod outbound;
pub mod platform;
pub mod podspec;
pub mod policy;
pub mod probe;
pub mod pullsecrets;
pub mod reference;
pub mod reload;
pub mod request;
pub mod review;
pub mod server;
pub mod tls;
pub mod token;
pub mod verdict;
pub mod workload;
