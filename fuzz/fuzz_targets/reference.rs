//! `ImageRef::parse`: the image string of every container of every Pod anyone may create.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pullgate::oci::reference::{ImageRef, ReferenceError};

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(image) = ImageRef::parse(input) else {
        return;
    };
    // Everything the probe and the messages derive from a parsed reference.
    let _ = (image.api_host(), image.manifest_reference(), image.name());
    let _ = format!("{image:?}");
    // What pullgate prints (in messages, cache keys) is itself a reference naming the same
    // image; normalising (`docker.io/library/`) may only push it over a length limit.
    let canonical = image.to_string();
    match ImageRef::parse(&canonical) {
        Ok(again) => {
            assert_eq!(again, image, "{input:?} -> {canonical:?}");
            assert_eq!(again.to_string(), canonical);
        }
        Err(ReferenceError::NameTooLong(_) | ReferenceError::TooLong) => {}
        Err(e) => panic!("{input:?} parses, but its canonical form {canonical:?} does not: {e}"),
    }
});
