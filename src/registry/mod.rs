//! HTTP to registries, in layers as go-containerregistry's `remote/transport` has them: the
//! [`Session`] of one image (OCI requests, redirects, the credential kept to its origin) on
//! the authenticator (challenges and tokens) on the transport (the wire, the egress guard,
//! back-offs, connection slots). Also the caches of challenges and tokens and the bounds on
//! sockets. It knows nothing of verdicts.

mod auth;
pub mod challenge;
mod client;
mod credential;
mod egress;
mod error;
pub(crate) mod hosts;
mod message;
mod options;
mod origins;
mod ratelimit;
mod session;
mod slots;
mod token;
mod transport;
mod warm;

pub use client::{RegistryClient, SessionTarget};
pub use credential::{Credential, CredentialId};
pub use egress::{EgressPolicy, Refused};
pub use error::{FetchError, MAX_REDIRECTS, display_url};
pub use hosts::{HostsError, NodeHosts};
pub use message::RegistryMessage;
pub use options::{ClientError, ClientOptions, HostTls};
pub use ratelimit::RateLimit;
pub use session::Session;
pub use slots::{OutOfDescriptors, OutboundLimits};
pub use token::TokenError;
pub use transport::{Body, MAX_ERROR_BODY, Reply, RequestObserver};
