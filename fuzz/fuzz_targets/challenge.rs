//! `challenge::select` over the `WWW-Authenticate` values of a registry's 401, one per line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pullgate::registry::challenge::{Challenge, select};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(Challenge::Bearer { realm, .. }) = select(text.split('\n')) {
        assert!(!realm.is_empty(), "a Bearer challenge always has a realm");
    }
    let _ = format!("{:?}", select([text.as_ref()]));
});
