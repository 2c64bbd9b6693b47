//! An AdmissionReview body, as `POST /validate` receives it: `request::parse`, then
//! `workload::from_request`, and the answer serialised the way the server writes it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pullgate::admission::{request, workload};
use pullgate::oci::reference::ImageRef;

fuzz_target!(|data: &[u8]| {
    let request = match request::parse(data) {
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
    let response = request.response().deny("fuzz");
    serde_json::to_vec(&response.into_review()).expect("the answer serialises");
});
