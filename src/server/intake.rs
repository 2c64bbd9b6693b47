//! Reading an AdmissionReview body within bounds of memory and time, whoever sends it.
//!
//! A review takes a share of the review memory before a byte of its body is read: its body
//! four times over (the bytes, and what is parsed from them) plus an allowance for its probes'
//! bookkeeping. No source address may hold more than a quarter of the memory, so one pod
//! cannot keep the apiserver's reviews waiting. A body must declare its length when it is
//! larger than what is parsed in place, must arrive at a rate no real client is slower than,
//! and a large one is parsed on a blocking thread, a few at a time, so that megabytes of JSON
//! never hold an async worker; once parsed, its share shrinks to the allowance.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use kube::core::admission::AdmissionResponse;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::admission::WorkloadRead;
use crate::admission::request::{self, AdmissionRequest};
use crate::admission::workload;

/// Bodies up to this size are parsed where they are read, and may come without a
/// `Content-Length`; larger ones are parsed on a blocking thread. At the parser's few hundred
/// MB/s this is well under a millisecond of an async worker.
pub(super) const INLINE_PARSE_BYTES: usize = 64 * 1024;
/// A review's share is its body this many times over: the bytes, and what is read from them
/// (up to three times their size, for a list of tiny containers).
const BODY_SHARE: usize = 4;
/// What a review's share covers besides its body: a small body's objects and the bookkeeping
/// of up to 256 images' probes. 64 MiB of review memory is then 256 small reviews in flight
/// at once, or 5 of the apiserver's largest (3 MiB).
pub(super) const REVIEW_ALLOWANCE: usize = 256 * 1024;
/// The share of the review memory one source address may hold.
const PER_SOURCE_SHARE: usize = 4;
/// A body gets this long to arrive, plus a second per MiB: the apiserver sends its body with
/// its headers, and a body trickled in over the whole budget would hold its share all along.
const BODY_GRACE: Duration = Duration::from_secs(2);
const BODY_RATE: u64 = 1024 * 1024;

/// The bounds reviews are read within.
pub(crate) struct Intake {
    max_body_bytes: usize,
    /// The review memory, in KiB.
    memory: Arc<Semaphore>,
    /// Each source's part of it, in KiB.
    sources: moka::sync::Cache<IpAddr, Arc<Semaphore>>,
    per_source_kib: usize,
    parsers: Arc<Semaphore>,
}

/// A request read from its body, with the review's share of memory, held until it is
/// answered.
pub(crate) struct Admitted {
    pub(crate) request: AdmissionRequest,
    /// The workload, when it was read with the request (large bodies).
    pub(crate) read: Option<WorkloadRead>,
    _share: Share,
}

struct Share {
    source: OwnedSemaphorePermit,
    total: OwnedSemaphorePermit,
}

impl Share {
    /// Gives back all but `kib` KiB.
    fn shrink_to(&mut self, kib: usize) {
        for permit in [&mut self.source, &mut self.total] {
            let excess = permit.num_permits().saturating_sub(kib);
            drop(permit.split(excess));
        }
    }
}

/// `bytes` in KiB, rounded up, the unit of the memory's permits.
fn kib(bytes: usize) -> usize {
    bytes.div_ceil(1024)
}

type Refusal = Box<AdmissionResponse>;

fn refuse<T>(message: String) -> Result<T, Refusal> {
    Err(Box::new(AdmissionResponse::invalid(message)))
}

impl Intake {
    /// Bounds for bodies of at most `max_body_bytes`, reviews sharing `memory` bytes.
    pub(crate) fn new(max_body_bytes: usize, memory: usize) -> Self {
        let memory = kib(memory).max(1);
        Intake {
            max_body_bytes,
            memory: Arc::new(Semaphore::new(memory)),
            sources: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_idle(Duration::from_secs(600))
                .build(),
            per_source_kib: (memory / PER_SOURCE_SHARE).max(1),
            parsers: Arc::new(Semaphore::new(
                std::thread::available_parallelism().map_or(2, usize::from),
            )),
        }
    }

    /// Reads the request `body` from `source` declares (`declared` bytes, when it says) before
    /// `deadline`, or the answer for a body that is not a review or cannot be read in time.
    pub(crate) async fn read(
        &self,
        source: IpAddr,
        declared: Option<u64>,
        body: Body,
        deadline: Instant,
    ) -> Result<Admitted, Refusal> {
        let max = self.max_body_bytes;
        if let Some(declared) = declared.filter(|&n| n > max as u64) {
            return refuse(format!(
                "pullgate: cannot read the AdmissionReview (over {max} bytes, or cut short): its Content-Length is {declared}"
            ));
        }
        // Without a declared length only a small body is read: its share is known up front.
        let limit = declared.map_or(INLINE_PARSE_BYTES, |n| n as usize);
        let mut share = self
            .share(source, BODY_SHARE * limit + REVIEW_ALLOWANCE, deadline)
            .await?;
        let started = Instant::now();
        let arrival =
            deadline.min(started + BODY_GRACE + Duration::from_secs(limit as u64 / BODY_RATE));
        let bytes = match tokio::time::timeout_at(arrival.into(), axum::body::to_bytes(body, limit))
            .await
        {
            Err(_) => {
                return refuse(format!(
                    "pullgate: the AdmissionReview body did not arrive within {}",
                    humantime::format_duration(round(arrival.saturating_duration_since(started)))
                ));
            }
            Ok(Err(e)) if declared.is_none() => {
                return refuse(format!(
                    "pullgate: cannot read the AdmissionReview: a body of more than {INLINE_PARSE_BYTES} bytes must declare its Content-Length, or it was cut short: {e}"
                ));
            }
            Ok(Err(e)) => {
                return refuse(format!(
                    "pullgate: cannot read the AdmissionReview (over {max} bytes, or cut short): {e}"
                ));
            }
            Ok(Ok(bytes)) => bytes,
        };
        if bytes.len() <= INLINE_PARSE_BYTES {
            let request = request::parse(&bytes)?;
            return Ok(Admitted {
                request,
                read: None,
                _share: share,
            });
        }
        let Ok(Ok(_parser)) =
            tokio::time::timeout_at(deadline.into(), self.parsers.clone().acquire_owned()).await
        else {
            return refuse(
                "pullgate: no parser became free before the review's deadline".to_owned(),
            );
        };
        let parsed = tokio::task::spawn_blocking(move || {
            let mut request = request::parse(&bytes)?;
            let read = workload::from_request(&request);
            // The objects were read into the workload; the rest of the review needs only the
            // request's envelope.
            request.object = None;
            request.old_object = None;
            Ok((request, read))
        });
        match parsed.await {
            Ok(Ok((request, read))) => {
                share.shrink_to(kib(REVIEW_ALLOWANCE));
                Ok(Admitted {
                    request,
                    read: Some(read),
                    _share: share,
                })
            }
            Ok(Err(refusal)) => Err(refusal),
            Err(e) => refuse(format!("pullgate: parsing the AdmissionReview failed: {e}")),
        }
    }

    /// `bytes` of the review memory for a review from `source`, waited for until `deadline`.
    async fn share(
        &self,
        source: IpAddr,
        bytes: usize,
        deadline: Instant,
    ) -> Result<Share, Refusal> {
        let wanted = kib(bytes).min(self.per_source_kib);
        let permits = u32::try_from(wanted).unwrap_or(u32::MAX);
        let per_source = self.per_source_kib;
        let mine = self
            .sources
            .get_with(source, || Arc::new(Semaphore::new(per_source)));
        let taken = tokio::time::timeout_at(deadline.into(), async {
            let source = mine.acquire_many_owned(permits).await.ok()?;
            let total = self.memory.clone().acquire_many_owned(permits).await.ok()?;
            Some(Share { source, total })
        })
        .await;
        match taken {
            Ok(Some(share)) => Ok(share),
            _ => refuse(
                "pullgate: too many AdmissionReviews are in flight at once (from this address, or in all); this one waited until its deadline"
                    .to_owned(),
            ),
        }
    }
}

/// `d` to whole milliseconds, for messages.
fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(uid: &str) -> Vec<u8> {
        format!(
            r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"{uid}","kind":{{"group":"","version":"v1","kind":"Pod"}},"operation":"CREATE","object":{{"spec":{{"containers":[]}}}}}}}}"#
        )
        .into_bytes()
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_millis(300)
    }

    #[tokio::test]
    async fn a_source_holds_at_most_a_quarter_of_the_memory() {
        // 4 MiB of memory: a source may hold 1 MiB, three small reviews' shares.
        let intake = Intake::new(8 << 20, 4 << 20);
        let a = IpAddr::from([10, 0, 0, 1]);
        let b = IpAddr::from([10, 0, 0, 2]);
        let mut held = Vec::new();
        for i in 0..3 {
            let body = review(&format!("u{i}"));
            let len = body.len() as u64;
            held.push(
                intake
                    .read(a, Some(len), Body::from(body), soon())
                    .await
                    .expect("within the source's share"),
            );
        }
        let body = review("u4");
        let len = body.len() as u64;
        let refused = intake.read(a, Some(len), Body::from(body), soon()).await;
        let message = refused
            .err()
            .expect("over the source's share")
            .result
            .message;
        assert!(message.contains("too many AdmissionReviews"), "{message}");
        // Another source is not held up.
        let body = review("b");
        let len = body.len() as u64;
        assert!(
            intake
                .read(b, Some(len), Body::from(body), soon())
                .await
                .is_ok()
        );
        drop(held);
        let body = review("u5");
        let len = body.len() as u64;
        assert!(
            intake
                .read(a, Some(len), Body::from(body), soon())
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn a_large_body_must_declare_its_length() {
        let intake = Intake::new(8 << 20, 64 << 20);
        let mut body = review("big");
        body.extend(std::iter::repeat_n(b' ', INLINE_PARSE_BYTES));
        let refused = intake
            .read(IpAddr::from([10, 0, 0, 1]), None, Body::from(body), soon())
            .await;
        let message = refused.err().expect("refused").result.message;
        assert!(
            message.contains("must declare its Content-Length"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn after_a_large_body_is_parsed_its_share_shrinks_to_the_allowance() {
        let intake = Intake::new(8 << 20, 64 << 20);
        let mut body = review("big");
        body.extend(std::iter::repeat_n(b' ', 1 << 20));
        let len = body.len() as u64;
        let admitted = intake
            .read(
                IpAddr::from([10, 0, 0, 1]),
                Some(len),
                Body::from(body),
                soon(),
            )
            .await
            .expect("a review");
        assert_eq!(admitted.request.uid, "big");
        assert!(
            admitted.read.is_some(),
            "read with the request, off the workers"
        );
        assert!(admitted.request.object.is_none(), "the objects are let go");
        let held = (64 << 10) - intake.memory.available_permits();
        assert_eq!(held, kib(REVIEW_ALLOWANCE));
    }
}
