//! The OCI vocabulary: image references, digests, manifests and indexes, platforms. Pure
//! values and parsing, no I/O.

pub mod digest;
pub mod manifest;
pub mod platform;
pub mod reference;
