//! Shared harness for pullgate's integration tests: a test CA, real `docker-registry`
//! processes, a token server, image pushing, a policy proxy and a blob CDN, all on
//! 127.0.0.1 over TLS.
//!
//! Every test file does `mod support;` and uses a different subset, hence the blanket
//! `dead_code` allowance.
#![allow(dead_code)]

mod apiserver;
mod cluster;
mod delay;
mod hostile;
mod hub;
mod image;
mod pki;
mod process;
mod proxy;
mod registry;
mod server;
mod token;
mod webhook;
mod world;

// A test file that uses only part of the harness must not warn about the rest.
#[allow(unused_imports)]
pub use apiserver::*;
#[allow(unused_imports)]
pub use cluster::*;
#[allow(unused_imports)]
pub use delay::*;
#[allow(unused_imports)]
pub use hostile::*;
#[allow(unused_imports)]
pub use hub::*;
#[allow(unused_imports)]
pub use image::*;
#[allow(unused_imports)]
pub use pki::*;
#[allow(unused_imports)]
pub use process::*;
#[allow(unused_imports)]
pub use proxy::*;
#[allow(unused_imports)]
pub use registry::*;
#[allow(unused_imports)]
pub use server::*;
#[allow(unused_imports)]
pub use token::*;
#[allow(unused_imports)]
pub use webhook::*;
#[allow(unused_imports)]
pub use world::*;
