//! pullgate decides whether container images can really be pulled, the way the kubelet would
//! pull them: it speaks the OCI Distribution API itself, answers every endpoint's auth
//! challenge, resolves indexes to a platform and probes one byte of every blob.
//!
//! # Layout
//! The folders follow the data path, and each imports only from the ones listed before it:
//! - [`oci`]: references, digests, manifests, platforms; pure values, no I/O.
//! - [`registry`]: HTTP to registries, as a session on an authenticator on a transport; the
//!   egress guard and the bounds on sockets. Knows nothing of verdicts.
//! - [`credentials`]: docker configs, the kubelet's keyring, pull secrets.
//! - [`probe`]: the deep probe, its verdicts, the verdict cache and the blob memory.
//! - [`policy`]: the policy file, the decision for a workload's findings, its texts.
//! - [`admission`]: what a review asks the nodes to pull, and the reviewer that answers it.
//! - [`server`]: the HTTPS and admin listeners, their connections, TLS, the intake of bodies.
//! - [`cli`]: one file per command.
//!
//! Underneath all of them: [`io`] (bounded reads), [`reload`] (values kept in step with
//! files), `fds` (the descriptor budget), [`metrics`] and the keyed fingerprints.
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

pub use server::{Config, Listeners, run};

pub mod admission;
pub mod audit;
pub mod cli;
pub mod credentials;
mod fds;
mod fingerprint;
pub mod io;
pub mod metrics;
pub mod oci;
pub mod policy;
pub mod probe;
pub mod registry;
pub mod reload;
pub mod server;
