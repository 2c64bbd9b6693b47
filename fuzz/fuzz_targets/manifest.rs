//! `manifest::parse(body, content_type)`: what a registry answers to a manifest GET. The first
//! line of the input is the Content-Type (none when empty), the rest the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pullgate::oci::manifest::{self, Document, MAX_INDEX_ENTRIES, MAX_LAYERS};
use pullgate::oci::platform::{Platform, PlatformRules};

fuzz_target!(|data: &[u8]| {
    let (content_type, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&data[..0], data),
    };
    let content_type = String::from_utf8_lossy(content_type);
    let content_type = Some(content_type.as_ref()).filter(|c| !c.is_empty());
    match manifest::parse(body, content_type) {
        Ok(Document::Index(index)) => {
            assert!(index.entries.len() <= MAX_INDEX_ENTRIES);
            for platform in [
                "linux/amd64",
                "linux/arm64/v8",
                "windows/amd64",
                "linux/arm/v7",
            ] {
                let platform = Platform::parse(platform).unwrap();
                for rules in [PlatformRules::Containerd, PlatformRules::ContainersImage] {
                    let _ = index.select(&platform, rules);
                }
            }
            let _ = index.offered(12);
        }
        Ok(Document::Image(image)) => assert!(image.layers.len() <= MAX_LAYERS),
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
