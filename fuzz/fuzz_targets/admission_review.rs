//! An AdmissionReview body, as `POST /validate` receives it: `server::parse_review`, then
//! `workload::from_request`, and the answer serialised the way the server writes it.
#![no_main]

use kube::core::admission::AdmissionResponse;
use libfuzzer_sys::fuzz_target;
use pullgate::reference::ImageRef;
use pullgate::{server, workload};

fuzz_target!(|data: &[u8]| {
    let request = match server::parse_review(data) {
        Ok(request) => request,
        Err(invalid) => {
            assert!(!invalid.allowed);
            serde_json::to_vec(&invalid.into_review()).expect("the refusal serialises");
            return;
        }
    };
    match workload::from_request(&request) {
        Ok(Some(workload)) => {
            for image in workload.images.iter().chain(&workload.skipped) {
                let _ = ImageRef::parse(&image.image);
                let _ = image.location.to_string();
            }
            let _ = workload.platforms(&[]);
        }
        Ok(None) => {}
        Err(e) => {
            let _ = e.to_string();
        }
    }
    let response = AdmissionResponse::from(&request).deny("fuzz");
    serde_json::to_vec(&response.into_review()).expect("the answer serialises");
});
